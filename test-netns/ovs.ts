import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { AppError, ErrorCodes } from '../core/errors.js';
import type { CommandRunner } from '../sys/runner.js';
import { startDaemon, stopDaemon, type DaemonHandle } from '../sys/process.js';
import { eventually } from './testing.js';

/**
 * Open vSwitch on a virtual host, as a real host runs it as a service: its own ovsdb-server (own
 * database and socket) and ovs-vswitchd, both in the host's namespace so the userspace datapath
 * opens that host's links. Several hosts on one machine never share a database or a socket.
 */

/** The fabric's VLAN-aware segment (a plain Linux bridge forwards 802.1Q frames as they are). */
export const TRUNK_BRIDGE = 'trunks';
/** Each host's trunk, plugged into TRUNK_BRIDGE. */
export const HOST_TRUNK = 'trunk';

const SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema';

export interface HostOvs {
  dbSocket: string;
  /** ovsdb-server, then ovs-vswitchd (stop in reverse). */
  processes: DaemonHandle[];
}

export async function startHostOvs(
  runner: CommandRunner,
  opts: { dir: string; netns: string; onStarted: (h: DaemonHandle) => void },
): Promise<HostOvs> {
  if (!existsSync(SCHEMA))
    throw new AppError(ErrorCodes.UNSUPPORTED, `Open vSwitch is not installed (${SCHEMA}); run scripts/setup.sh`);
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  const db = join(opts.dir, 'conf.db');
  const dbSocket = join(opts.dir, 'db.sock');
  // A restart keeps the database (bridges and ports), as a host's service restart does.
  if (!existsSync(db)) await runner.run({ argv: ['ovsdb-tool', 'create', db, SCHEMA] });
  rmSync(dbSocket, { force: true });
  const netns = { name: opts.netns };
  const env = { OVS_RUNDIR: opts.dir, OVS_LOGDIR: opts.dir, OVS_DBDIR: opts.dir };
  const server = startDaemon({
    argv: ['ovsdb-server', db, `--remote=punix:${dbSocket}`, `--unixctl=${join(opts.dir, 'ovsdb.ctl')}`],
    netns,
    env,
    logFile: join(opts.dir, 'ovsdb-server.log'),
    detached: true,
  });
  opts.onStarted(server);
  const processes = [server];
  try {
    if (!(await eventually(() => existsSync(dbSocket), 10_000, 10)))
      throw new AppError(ErrorCodes.INTERNAL, `ovsdb-server did not listen on ${dbSocket}`);
    const vsctl = ['ovs-vsctl', `--db=unix:${dbSocket}`, '--timeout=10'];
    await runner.run({ argv: [...vsctl, '--no-wait', 'init'] });
    // Datapath types are filled in by the ovs-vswitchd that starts next (not an earlier one's).
    await runner.run({ argv: [...vsctl, '--no-wait', 'clear', 'Open_vSwitch', '.', 'datapath_types'] });
    const vswitchd = startDaemon({
      argv: ['ovs-vswitchd', `unix:${dbSocket}`, `--unixctl=${join(opts.dir, 'vswitchd.ctl')}`],
      netns,
      env,
      logFile: join(opts.dir, 'ovs-vswitchd.log'),
      detached: true,
    });
    opts.onStarted(vswitchd);
    processes.push(vswitchd);
    // ovs-vswitchd fills in the datapath types once it runs.
    const running = async () =>
      (await runner.run({ argv: [...vsctl, 'get', 'Open_vSwitch', '.', 'datapath_types'] })).stdout.includes('netdev');
    if (!(await eventually(running, 10_000, 20)))
      throw new AppError(ErrorCodes.INTERNAL, `ovs-vswitchd did not start (see ${opts.dir})`);
    return { dbSocket, processes };
  } catch (err) {
    for (const p of processes.reverse()) await stopDaemon(p, 2000);
    throw err;
  }
}
