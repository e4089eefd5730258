import { XMLParser } from 'fast-xml-parser';
import { AppError, ErrorCodes, invalidInput } from '../core/errors.js';
import { isCommandError, type CommandRunner, type NetnsTarget } from './runner.js';

/**
 * The gluster CLI in script mode with XML output (`gluster --mode=script --xml VERB ...`). Every
 * answer is a <cliOutput> with opRet/opErrno/opErrstr; gluster often prints it on stdout while
 * exiting non-zero, so failures are read from the XML first. "Another transaction is in progress"
 * (a cluster-wide lock held by a concurrent CLI) is E_GLUSTER_BUSY: retryable.
 */

export interface GlusterPeer {
  uuid: string;
  hostname: string;
  connected: boolean;
  state: string;
}

export interface GlusterBrick {
  name: string;
  hostUuid: string;
}

export interface GlusterVolume {
  name: string;
  id: string;
  status: string;
  type: string;
  replicaCount: number;
  brickCount: number;
  bricks: GlusterBrick[];
  options: Record<string, string>;
}

const ARRAYS = new Set([
  'cliOutput.peerStatus.peer',
  'cliOutput.volInfo.volumes.volume',
  'cliOutput.volInfo.volumes.volume.bricks.brick',
  'cliOutput.volInfo.volumes.volume.options.option',
  'cliOutput.volList.volume',
]);
const parser = (): XMLParser =>
  new XMLParser({
    ignoreAttributes: false,
    parseTagValue: false,
    isArray: (_name, jpath) => ARRAYS.has(String(jpath)),
  });

type Xml = Record<string, unknown>;

export function parseCliOutput(xml: string): Xml {
  const doc = parser().parse(xml) as { cliOutput?: Xml };
  if (!doc.cliOutput)
    throw new AppError(ErrorCodes.GLUSTER_FAILED, 'gluster printed no <cliOutput>', { output: xml.slice(0, 500) });
  const out = doc.cliOutput;
  if (String(out.opRet ?? '0') !== '0') {
    const msg = String(out.opErrstr ?? '') || `opRet ${String(out.opRet)} opErrno ${String(out.opErrno)}`;
    const busy = /Another transaction is in progress|locking failed|Locking failed/i.test(msg);
    throw new AppError(busy ? ErrorCodes.GLUSTER_BUSY : ErrorCodes.GLUSTER_FAILED, `gluster: ${msg}`, {
      opRet: out.opRet,
      opErrno: out.opErrno,
    });
  }
  return out;
}

const str = (v: unknown): string =>
  v === undefined || v === null ? '' : typeof v === 'object' ? String((v as Xml)['#text'] ?? '') : String(v);

export class GlusterClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly netns?: NetnsTarget,
    private readonly timeoutMs = 120_000,
  ) {}

  /** Runs one verb and returns its parsed <cliOutput>, mapping gluster's errors. */
  async cli(args: readonly string[]): Promise<Xml> {
    for (const a of args)
      if (a.length === 0 || a.length > 4096 || /[\0\n]/.test(a))
        throw invalidInput(`bad gluster argument ${JSON.stringify(a)}`);
    try {
      const { stdout } = await this.runner.run({
        argv: ['gluster', '--mode=script', '--xml', ...args],
        netns: this.netns,
        timeoutMs: this.timeoutMs,
      });
      return parseCliOutput(stdout);
    } catch (err) {
      if (isCommandError(err) && err.stdout.includes('<cliOutput>')) return parseCliOutput(err.stdout);
      if (isCommandError(err) && /Another transaction is in progress|locking failed/i.test(err.stderr + err.stdout)) {
        throw new AppError(
          ErrorCodes.GLUSTER_BUSY,
          `gluster: ${err.stderr.trim() || err.stdout.trim()}`,
          {},
          { cause: err },
        );
      }
      throw err;
    }
  }

  async peerProbe(host: string): Promise<void> {
    await this.cli(['peer', 'probe', host]);
  }

  async peerDetach(host: string): Promise<void> {
    await this.cli(['peer', 'detach', host]);
  }

  async peerStatus(): Promise<GlusterPeer[]> {
    const out = await this.cli(['peer', 'status']);
    const peers = ((out.peerStatus as Xml | undefined)?.peer ?? []) as Xml[];
    return peers.map((p) => ({
      uuid: str(p.uuid),
      hostname: str(p.hostname),
      connected: str(p.connected) === '1',
      state: str(p.stateStr),
    }));
  }

  async volumeList(): Promise<string[]> {
    const out = await this.cli(['volume', 'list']);
    return (((out.volList as Xml | undefined)?.volume ?? []) as unknown[]).map(str);
  }

  async volumeInfo(name?: string): Promise<GlusterVolume[]> {
    const out = await this.cli(['volume', 'info', ...(name ? [name] : ['all'])]);
    const vols = (((out.volInfo as Xml | undefined)?.volumes as Xml | undefined)?.volume ?? []) as Xml[];
    return vols.map((v) => ({
      name: str(v.name),
      id: str(v.id),
      status: str(v.statusStr),
      type: str(v.typeStr),
      replicaCount: Number(str(v.replicaCount) || '1'),
      brickCount: Number(str(v.brickCount) || '0'),
      bricks: (((v.bricks as Xml | undefined)?.brick ?? []) as Xml[]).map((b) => ({
        name: str(b.name),
        hostUuid: str(b.hostUuid),
      })),
      options: Object.fromEntries(
        (((v.options as Xml | undefined)?.option ?? []) as Xml[]).map((o) => [str(o.name), str(o.value)]),
      ),
    }));
  }

  async volumeCreate(spec: {
    name: string;
    bricks: readonly string[];
    replica?: number;
    force?: boolean;
  }): Promise<void> {
    const args = ['volume', 'create', spec.name];
    if (spec.replica && spec.replica > 1) args.push('replica', String(spec.replica));
    args.push('transport', 'tcp', ...spec.bricks);
    if (spec.force) args.push('force');
    await this.cli(args);
  }

  async volumeStart(name: string): Promise<void> {
    await this.cli(['volume', 'start', name]);
  }

  async volumeStop(name: string): Promise<void> {
    await this.cli(['volume', 'stop', name, 'force']);
  }

  async volumeDelete(name: string): Promise<void> {
    await this.cli(['volume', 'delete', name]);
  }

  async quotaEnable(volume: string): Promise<void> {
    await this.cli(['volume', 'quota', volume, 'enable']);
  }

  async quotaLimitUsage(volume: string, path: string, bytes: number): Promise<void> {
    if (!Number.isSafeInteger(bytes) || bytes <= 0)
      throw invalidInput(`quota must be a positive number of bytes, got ${bytes}`);
    // gluster takes sizes with a unit suffix; KB keeps byte-level intent within 1 KiB.
    await this.cli(['volume', 'quota', volume, 'limit-usage', path, `${Math.ceil(bytes / 1024)}KB`]);
  }
}
