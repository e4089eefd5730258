import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CommandRunner, CommandResult } from '../sys/runner.js';
import { uniqueSuffix } from './testing.js';

/**
 * podman as a real CNI client on a virtual host (DESIGN.md recipe): runc, cgroupfs, the CNI
 * backend, explicit ulimits, and a busybox image imported from a rootfs tar (no registry). Every
 * call enters only the host's network namespace (nsenter --net), so the plugin runs there, as on a
 * real host. Networks are conflists in a private config dir; plugins come from a private bin dir
 * first, then the reference plugins.
 */
export class Podman {
  readonly image: string;
  readonly dir: string;
  private readonly confPath: string;

  private constructor(
    private readonly runner: CommandRunner,
    dir: string,
    image: string,
  ) {
    this.dir = dir;
    this.image = image;
    this.confPath = join(dir, 'containers.conf');
  }

  static async create(runner: CommandRunner, opts: { pluginDir: string }): Promise<Podman> {
    const dir = mkdtempSync(join(tmpdir(), 'tn-podman-'));
    mkdirSync(join(dir, 'net.d'));
    writeFileSync(
      join(dir, 'containers.conf'),
      `[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["${opts.pluginDir}", "/usr/lib/cni"]\nnetwork_config_dir = "${join(dir, 'net.d')}"\n`,
    );
    // A busybox rootfs: the image needs nothing from a registry.
    const root = join(dir, 'rootfs');
    mkdirSync(join(root, 'bin'), { recursive: true });
    copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
    for (const applet of ['sh', 'ping', 'sleep', 'ip', 'cat', 'echo', 'nc', 'true'])
      symlinkSync('busybox', join(root, 'bin', applet));
    await runner.run({ argv: ['tar', '-C', root, '-cf', join(dir, 'rootfs.tar'), '.'] });
    const image = `localhost/tn-bb-${uniqueSuffix()}`;
    const p = new Podman(runner, dir, image);
    await p.podman(undefined, ['import', '-q', join(dir, 'rootfs.tar'), image]);
    return p;
  }

  addNetwork(conflist: { name: string; cniVersion?: string; plugins: object[] }): void {
    writeFileSync(
      join(this.dir, 'net.d', `${conflist.name}.conflist`),
      JSON.stringify({ cniVersion: '1.0.0', ...conflist }),
    );
  }

  /** podman with our configuration, in `netns` (a host's) when given. */
  podman(netns: string | undefined, args: string[], timeoutMs = 60_000): Promise<CommandResult> {
    return this.runner.run({
      argv: ['podman', '--runtime', 'runc', '--cgroup-manager', 'cgroupfs', '--network-backend', 'cni', ...args],
      netns: netns ? { path: `/run/netns/${netns}` } : undefined,
      env: { CONTAINERS_CONF: this.confPath },
      timeoutMs,
    });
  }

  run(
    netns: string,
    opts: { name?: string; networks: string[]; detach?: boolean; rm?: boolean; publish?: string[] },
    command: string[],
  ): Promise<CommandResult> {
    return this.podman(netns, [
      'run',
      ...(opts.detach ? ['-d'] : []),
      ...(opts.rm ? ['--rm'] : []),
      ...(opts.name ? ['--name', opts.name] : []),
      // HOST_PORT:CONTAINER_PORT, through the portMappings capability (a portmap plugin in the chain).
      ...(opts.publish ?? []).flatMap((p) => ['-p', p]),
      // Interface names follow the order given (eth0, eth1, ...): podman's own order is not stable.
      ...opts.networks.flatMap((n, i) => ['--network', `${n}:interface_name=eth${i}`]),
      '--ulimit',
      'nofile=10000:10000',
      '--ulimit',
      'nproc=1000:1000',
      this.image,
      ...command,
    ]);
  }

  async remove(netns: string, name: string): Promise<void> {
    await this.podman(netns, ['rm', '-f', '-t', '0', name]);
  }

  async cleanup(): Promise<void> {
    await this.podman(undefined, ['rmi', '-f', this.image]).catch(() => undefined);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
