import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.tap/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  // Formatting is prettier's (npm run format); eslint keeps to correctness.
  prettier,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Only sys/ may spawn processes (see docs/architecture.md).
      'no-restricted-imports': [
        'error',
        {
          paths: [
            { name: 'node:child_process', message: 'Spawn processes through sys/runner (CommandRunner).' },
            { name: 'child_process', message: 'Spawn processes through sys/runner (CommandRunner).' },
          ],
        },
      ],
    },
  },
  {
    files: ['sys/runner.ts', 'sys/process.ts'],
    rules: { 'no-restricted-imports': 'off' },
  },
);
