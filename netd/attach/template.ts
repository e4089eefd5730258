import { describeError } from '../../core/errors.js';
import { IpClient, type IpBatch, type IpBatchLane } from '../../sys/ip.js';
import { TcClient } from '../../sys/tc.js';
import { isCommandError, type CommandRunner, type NetnsTarget } from '../../sys/runner.js';
import type { Logger } from '../../sys/log.js';
import type { Store } from '../../store/types.js';
import type { Allocation, Ipam } from '../../ipam/allocator.js';
import type { AttachmentRecord, HostRecord, QosSpec } from '../../tenancy/records.js';
import type { DeferredStoreWork } from '../deferred.js';
import { linkNames } from '../names.js';
import type { PortClaims } from '../port-claims.js';
import { UndoStack } from './undo.js';
import { removePort, wireVeth } from './veth.js';

/**
 * Attaching one container interface, whatever its kind (eth1 on a VPC, eth0 external; later the
 * vlan and routed modes and the Docker driver): the steps are the same, only an InterfacePlan
 * differs. The order makes a crash at any point recoverable: address + record (the intent, one
 * etcd transaction) ‖ veth pair → container side configured. A failure undoes everything this
 * call did, in reverse (an UndoStack), and never what an earlier ADD did.
 */

/** What differs between kinds of interface. */
export interface InterfacePlan<R extends AttachmentRecord> {
  /** For logs: 'vpc' or 'external'. */
  kind: string;
  /** More log fields (tenant, vpc, pool). */
  logContext?: Record<string, string>;
  /** Endpoint id: also the ipam handle of its address. */
  id: string;
  containerId: string;
  ifname: string;
  netnsPath: string;
  pool: string;
  recordKey: string;
  hostIf: string;
  mtu: number;
  /** The container's interface gets no IPv6 link-local address (IPv4 only, or a routed IPv6 /128). */
  noLinkLocal: boolean;
  /** The MAC the container's interface is created with. */
  creationMac: string;
  /** The MAC it must end with once its address is known (set before it comes up). */
  macFor(ip: string): string;
  /** The bridge the host end joins as it is created (it must be up). */
  master?: string;
  /** Rate limits this ADD applies itself. */
  qos?: QosSpec;
  /** Egress is shaped on a veth the plan creates itself (`onHost`), not an ifb (see VethPlug). */
  shaper?: boolean;
  /** A specific address (CNI ips capability / IP=). */
  ip?: string;
  record(allocation: Allocation): R;
  /** Host-side lines for the batch that creates the pair. */
  onHost?(b: IpBatch): void;
  /** Host-side lines that need the address. */
  onHostWithAddress?(b: IpBatch, allocation: Allocation): void;
  /** Once the address is known: claims to hold and undo steps to register (e.g. eth0's proxy entry). */
  onAddress?(allocation: Allocation, hold: (claim: string) => void, undo: UndoStack): void;
  /** Container-side lines: addresses, routes. */
  inside(b: IpBatch, allocation: Allocation): void;
  /**
   * The port's anti-spoofing, once the port exists and before the container's side comes up
   * (idempotent: a retried ADD that finds the attachment complete runs it again).
   */
  secure?(allocation: Allocation): Promise<void>;
  /** After the wiring, before answering (idempotent: a retried ADD runs it again). */
  finish?(allocation: Allocation): Promise<void>;
}

export interface Attached<R extends AttachmentRecord> {
  record: R;
  allocation: Allocation;
  /** The port joined its bridge as it was created (or needs none). */
  joinedBridge: boolean;
  /** Limits this call put in place. */
  qosApplied?: QosSpec;
  /** A repeated ADD found the attachment complete and returned it as it was. */
  existing: boolean;
}

/**
 * The daemon's view of the records: asked first (null: none, undefined: ask etcd), and told of
 * every record this host writes or deletes before the write is sent, so its watch echo changes
 * nothing (otherwise every ADD and DEL would cost a full reconcile listing every link).
 */
export interface RecordView {
  current(key: string): AttachmentRecord | null | undefined;
  note(key: string, record: AttachmentRecord | undefined): void;
}

export interface AttacherDeps {
  store: Store;
  ipam: Ipam;
  runner: CommandRunner;
  self: HostRecord;
  /** The host's namespace (the daemon's own when undefined). */
  hostNetns?: NetnsTarget;
  /** Names this ADD wires, held against the reconciler's orphan removal. */
  claims: PortClaims;
  /** etcd writes deferred while etcd is away (DEL and rollback). */
  deferred: DeferredStoreWork;
  /** Shared by concurrent ADDs: their host-side batches go out in one `ip` process. */
  hostLane?: IpBatchLane;
  records?: RecordView;
  logger: Logger;
}

export class Attacher {
  private readonly hostIp: IpClient;

  constructor(private readonly deps: AttacherDeps) {
    this.hostIp = new IpClient(deps.runner, deps.hostNetns);
  }

  async attach<R extends AttachmentRecord>(plan: InterfacePlan<R>): Promise<Attached<R>> {
    const { deps } = this;
    const log = deps.logger.child({
      kind: plan.kind,
      ...plan.logContext,
      container: plan.containerId,
      ifname: plan.ifname,
    });
    // A DEL of this endpoint that etcd could not take yet goes first (else it could free our address).
    await deps.deferred.settle(plan.id);
    const existing = await this.lookup(plan.recordKey);
    if (existing) {
      // ADD again (a runtime retry): a complete attachment is returned as it is; a half-done one (a
      // daemon that died mid-ADD) is finished below, reusing its address. Nothing an earlier ADD
      // created is undone by a failure now.
      const prior = existing as R;
      const held = await this.heldAddress(plan);
      if (held && (await this.whyNotWired({ ...prior, netns: plan.netnsPath, ifname: plan.ifname })) === undefined) {
        return { record: prior, allocation: held, joinedBridge: true, existing: true };
      }
    }
    // Without a record there is no earlier allocation to keep: an ADD that died after allocating
    // without writing its record left a handle that recovery releases; only a retry looks.
    const hadAddress = existing ? (await this.heldAddress(plan)) !== undefined : false;
    const undo = new UndoStack();
    const releases = [deps.claims.claim(plan.hostIf)];
    if (plan.shaper || plan.qos?.egressBps !== undefined)
      releases.push(deps.claims.claim(linkNames.ifbFor(plan.hostIf)));
    // The record this call writes: a retry keeps the limits a tenant set on the attachment since.
    const build = (a: Allocation): R => {
      const r = plan.record(a);
      return existing?.qos && !r.qos ? { ...r, qos: existing.qos } : r;
    };
    let record: R | undefined;
    try {
      const inside = new IpClient(deps.runner, { path: plan.netnsPath });
      const creationMac = plan.creationMac.toLowerCase();
      const wired = await wireVeth(
        {
          hostIp: this.hostIp,
          inside,
          hostIf: plan.hostIf,
          netnsPath: plan.netnsPath,
          ifname: plan.ifname,
          mac: creationMac,
          mtu: plan.mtu,
          fresh: !existing,
          noLinkLocal: plan.noLinkLocal,
          ...(plan.shaper && { shaper: true }),
          ...(plan.master !== undefined && { master: plan.master }),
          ...(deps.hostLane && { hostLane: deps.hostLane }),
          ...(plan.qos && { qos: plan.qos }),
          ...((plan.qos || plan.shaper) && { tc: new TcClient(deps.runner, deps.hostNetns) }),
        },
        undo,
        {
          allocate: async () => {
            const allocation = await deps.ipam.allocate({
              pool: plan.pool,
              handle: plan.id,
              owner: { containerId: plan.containerId, ifname: plan.ifname, netns: plan.netnsPath },
              ...(plan.ip !== undefined && { ip: plan.ip }),
              // The record goes into the allocation's transaction: one etcd write per ADD.
              alsoWrite: (a) => {
                const r = build(a);
                deps.records?.note(plan.recordKey, r);
                return { key: plan.recordKey, value: JSON.stringify(r) };
              },
            });
            if (!hadAddress)
              undo.push('release address', () =>
                this.deferStore(plan.id, 'release address', () => deps.ipam.releaseHandle(plan.id, plan.pool)),
              );
            // A record this call wrote goes on failure: a new one, or an old one that held no address
            // (rewritten with this allocation's, which a failure releases).
            if (!existing || !hadAddress) undo.push('delete record', () => this.deleteRecord(plan.id, plan.recordKey));
            plan.onAddress?.(allocation, (claim) => releases.push(deps.claims.claim(claim)), undo);
            return allocation;
          },
          persist: async (allocation) => {
            record = build(allocation);
            if (allocation.wroteAlso) return;
            deps.records?.note(plan.recordKey, record);
            await deps.store.put(plan.recordKey, JSON.stringify(record));
          },
          ...(plan.onHost && { onHost: (b: IpBatch) => plan.onHost!(b) }),
          ...(plan.onHostWithAddress && {
            onHostWithAddress: (b: IpBatch, a: Allocation) => plan.onHostWithAddress!(b, a),
          }),
          ...(plan.secure && { secure: (a: Allocation) => plan.secure!(a) }),
          beforeUp: (b, allocation) => {
            const final = plan.macFor(allocation.ip).toLowerCase();
            if (final !== creationMac) b.linkSet(plan.ifname, { address: final });
          },
          inside: (b, allocation) => plan.inside(b, allocation),
        },
      );
      await plan.finish?.(wired.allocation);
      log.info({ ip: wired.allocation.ip, hostIf: plan.hostIf }, 'attached');
      return {
        record: record!,
        allocation: wired.allocation,
        joinedBridge: wired.joinedBridge,
        ...(plan.qos && { qosApplied: plan.qos }),
        existing: false,
      };
    } catch (err) {
      log.warn({ err: describeError(err) }, 'attach failed; rolling back');
      await undo.unwind(log);
      // The view learnt of the record before it was written: it goes back to what etcd holds now
      // (the prior record a retry kept, else none), also when the write itself failed.
      deps.records?.note(plan.recordKey, existing && hadAddress ? existing : undefined);
      throw err;
    } finally {
      for (const release of releases) release();
    }
  }

  /**
   * Removes one container interface; idempotent (whatever is already gone is success, the netns
   * may be gone too). The record goes while the kernel deletes the pair (~20 ms of RCU waits);
   * the address is released only once no interface carries it any more. While etcd is away the
   * kernel side is still removed and the etcd side waits in `deferred`.
   */
  async detach(spec: {
    id: string;
    recordKey: string;
    hostIf: string;
    /** The address's pool; without it, every address the endpoint's handle holds is released. */
    pool?: string;
    extraHostLines?: (b: IpBatch) => void;
    /**
     * The port's shaper veth pair (vlan, userspace datapath) is left to the reconciler, which
     * removes it moments later as an orphan: each link deletion waits for an RCU grace period
     * (~17 ms here), and the DEL is complete without it (the pair is off OVS and leads nowhere).
     */
    leaveShaper?: boolean;
  }): Promise<void> {
    await Promise.all([
      removePort(this.hostIp, spec.hostIf, spec.extraHostLines, { leaveShaper: spec.leaveShaper === true }),
      this.deleteRecord(spec.id, spec.recordKey),
    ]);
    await this.deferStore(spec.id, 'release address', () => this.deps.ipam.releaseHandle(spec.id, spec.pool));
  }

  /**
   * Why a recorded attachment is not complete (undefined: it is): the host port exists and the
   * container's interface carries the recorded address. One check for ADD retries, CHECK and
   * recovery.
   */
  async whyNotWired(r: Pick<AttachmentRecord, 'hostIf' | 'ip' | 'netns' | 'ifname'>): Promise<string | undefined> {
    if (!r.netns || !r.ifname) return 'no netns recorded';
    if (!(await this.hostIp.link(r.hostIf))) return 'no host port';
    // Only "it is not there" counts as gone: a timeout or a failed exec says nothing about the
    // container, and recovery would remove a healthy one on its word.
    const addrs = await new IpClient(this.deps.runner, { path: r.netns }).addresses(r.ifname).catch((err: unknown) => {
      if (isCommandError(err, 'not-found')) return undefined;
      throw err;
    });
    if (addrs === undefined) return 'container netns or interface gone';
    return addrs.some((a) => a.addr_info.some((x) => x.local === r.ip)) ? undefined : 'container interface incomplete';
  }

  private deleteRecord(id: string, key: string): Promise<void> {
    this.deps.records?.note(key, undefined);
    return this.deferStore(id, 'delete record', () => this.deps.store.delete(key));
  }

  private async deferStore(id: string, label: string, run: () => Promise<unknown>): Promise<void> {
    await this.deps.deferred.attempt(id, label, run);
  }

  private async lookup(key: string): Promise<AttachmentRecord | undefined> {
    const local = this.deps.records?.current(key);
    if (local !== undefined) return local ?? undefined;
    const kv = await this.deps.store.get(key);
    return kv ? (JSON.parse(kv.value) as AttachmentRecord) : undefined;
  }

  private async heldAddress(plan: InterfacePlan<AttachmentRecord>): Promise<Allocation | undefined> {
    const [held] = (await this.deps.ipam.getHandle(plan.id)).filter((h) => h.pool === plan.pool);
    if (!held) return undefined;
    return {
      handle: plan.id,
      pool: plan.pool,
      ip: held.ip,
      cidr: `${held.ip}/${held.prefixLength}`,
      gateway: '',
      seq: held.seq,
      block: held.block,
    };
  }
}
