import { chmodSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SOCKET_DIR } from './cni-server.js';

/**
 * The `netd` CNI plugin is a few lines of POSIX sh, not Node: a runtime starts it for every ADD
 * and DEL, and Node's start-up alone (~120 ms here) would dwarf the work. It forwards the CNI_*
 * environment and the config to the daemon of the host it runs on and prints the reply.
 */
export function pluginScript(socketDir = SOCKET_DIR): string {
  return `#!/bin/sh
# netd CNI plugin: forwards this call to the netd daemon of the host (network namespace) it runs in.
if [ "$CNI_COMMAND" = VERSION ]; then
  # Answered without the daemon: VERSION must work even when netd is down.
  echo '{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}'
  exit 0
fi
ino=$(stat -L -c %i /proc/self/ns/net) || exit 1
sock="${socketDir}/net-$ino.sock"
if [ ! -S "$sock" ]; then
  printf '{"cniVersion":"1.0.0","code":11,"msg":"netd is not running on this host (no %s)"}\\n' "$sock"
  exit 1
fi
reply=$({ env | grep '^CNI_'; echo; cat; } | socat -t 120 -T 120 - "UNIX-CONNECT:$sock") || {
  printf '{"cniVersion":"1.0.0","code":11,"msg":"netd did not answer"}\\n'
  exit 1
}
status=\${reply%%"
"*}
case "$status" in 0|1) ;; *) printf '{"cniVersion":"1.0.0","code":11,"msg":"netd gave no answer"}\n'; exit 1 ;; esac
printf '%s\\n' "\${reply#*"
"}"
exit "$status"
`;
}

/** Writes the plugin into the CNI bin directory atomically (temp file + rename). */
export function installNetdPlugin(binDir: string, socketDir = SOCKET_DIR): string {
  mkdirSync(binDir, { recursive: true });
  const target = join(binDir, 'netd');
  const tmp = `${target}.tmp-${process.pid}`;
  writeFileSync(tmp, pluginScript(socketDir));
  chmodSync(tmp, 0o755);
  renameSync(tmp, target);
  return target;
}
