#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { describeError, invalidInput, isAppError, ErrorCodes } from '../core/errors.js';
import { ExecRunner } from '../sys/runner.js';
import { createLogger } from '../sys/log.js';
import { VirtualCluster, teardownCluster, COMPONENTS, type Component } from './cluster.js';
import { findLeaks, formatLeaks } from './leaks.js';
import { DATA_ROOT, STATE_ROOT } from './names.js';
import { readdirSync } from 'node:fs';

const USAGE = `usage:
  test-netns up --hosts N [--prefix P] [--etcd-members K] [--gluster-nodes M] [--with netd,storaged] [--vlan] [--json]
                (--vlan: a trunk per host into a VLAN segment of the fabric, Open vSwitch on every host)
  test-netns down [--prefix P]          (without --prefix: every cluster)
  test-netns describe --prefix P        (the JSON that up printed)
  test-netns leaks [--prefix P]         (exit 1 when anything is left)
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      hosts: { type: 'string' },
      prefix: { type: 'string' },
      'gluster-nodes': { type: 'string' },
      'etcd-members': { type: 'string' },
      with: { type: 'string' },
      vlan: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const verb = positionals[0];
  if (values.help || !verb) {
    process.stdout.write(USAGE);
    return values.help ? 0 : 2;
  }
  // Logs go to stderr so --json output on stdout stays machine-readable.
  const logger = createLogger({ level: process.env.LOG_LEVEL ?? 'warn', destination: process.stderr });
  const runner = new ExecRunner({ logger });
  const deps = { runner, logger };
  switch (verb) {
    case 'up': {
      const cluster = await VirtualCluster.up(
        {
          prefix: values.prefix ?? 'tn',
          hosts: parseCount('--hosts', values.hosts, 1),
          glusterNodes: parseCount('--gluster-nodes', values['gluster-nodes'], 0),
          etcdMembers: parseCount('--etcd-members', values['etcd-members'], 1),
          with: parseComponents(values.with),
          ...(values.vlan && { vlan: true }),
        },
        deps,
      );
      const d = cluster.description;
      if (values.json) {
        process.stdout.write(JSON.stringify(d, null, 2) + '\n');
      } else {
        process.stdout.write(
          `cluster ${d.prefix} up: etcd ${d.etcd.client.endpoints.join(',')} (TLS; CA ${d.etcd.ca}, user root)\n`,
        );
        for (const h of d.hosts) process.stdout.write(`  ${h.name}\t${h.netns}\t${h.underlayIp}\n`);
        process.stdout.write(`  outside\t${d.outside.netns}\t${d.outside.address}\n`);
      }
      return 0;
    }
    case 'describe': {
      if (!values.prefix) throw invalidInput('describe needs --prefix');
      process.stdout.write(JSON.stringify(VirtualCluster.load(values.prefix, deps).description, null, 2) + '\n');
      return 0;
    }
    case 'down': {
      // A data dir without its state dir is what a crash between the two leaves.
      const prefixes = values.prefix
        ? [values.prefix]
        : [...new Set([...safeReaddir(STATE_ROOT), ...safeReaddir(DATA_ROOT)])];
      for (const p of prefixes) await teardownCluster(p, deps);
      return 0;
    }
    case 'leaks': {
      const leaks = await findLeaks({ prefix: values.prefix, runner });
      if (leaks.length === 0) {
        process.stdout.write('no leaks\n');
        return 0;
      }
      process.stdout.write(formatLeaks(leaks) + '\n');
      return 1;
    }
    default:
      throw invalidInput(`unknown command "${verb}"\n${USAGE}`);
  }
}

function parseCount(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text)) throw invalidInput(`${flag} must be a whole number, got "${text}"`);
  return Number(text);
}

function parseComponents(text: string | undefined): Component[] {
  if (!text) return [];
  return text.split(',').map((c) => {
    if (!(COMPONENTS as readonly string[]).includes(c))
      throw invalidInput(`unknown component "${c}" (known: ${COMPONENTS.join(', ')})`);
    return c as Component;
  });
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`test-netns: ${describeError(err)}\n`);
    process.exit(isAppError(err, ErrorCodes.INVALID_INPUT) ? 2 : 1);
  },
);
