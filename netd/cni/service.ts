import { AppError, describeError, ErrorCodes } from '../../core/errors.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { parseIp } from '../../core/cidr.js';
import {
  CniErrorCodes,
  CniFailure,
  serveCniCall,
  validAttachments,
  type CniReply,
  type CniRequest,
  type CniResult,
} from '../../core/cni.js';
import { IpBatch, IpClient } from '../../sys/ip.js';
import { SysctlClient } from '../../sys/sysctl.js';
import type { CommandRunner, NetnsTarget } from '../../sys/runner.js';
import type { Logger } from '../../sys/log.js';
import type { Store } from '../../store/types.js';
import { checkSegment } from '../../ipam/keys.js';
import { modelKeys } from '../../tenancy/keys.js';
import {
  endpointId,
  type AttachmentRecord,
  type ExternalEndpointRecord,
  type HostRecord,
  type QosSpec,
  type VpcRecord,
} from '../../tenancy/records.js';
import type { Attached, Attacher } from '../attach/template.js';
import { internalPlan, routedInternalPlan, vlanInternalPlan } from '../attach/internal.js';
import { routedFamily } from '../modes/routed.js';
import type { SourceGuard } from '../source-guard.js';
import type { PortGuard } from '../../tagqueue/port-guard.js';
import { externalPlan, LINK_LOCAL_GATEWAY } from '../attach/external.js';
import type { ExternalMode } from '../external.js';
import type { HostView } from '../host-view.js';
import type { NetdMetrics } from '../metrics.js';
import { linkNames } from '../names.js';
import { fromBandwidthCapability } from '../qos.js';
import type { Reconciler } from '../reconciler.js';
import type { VlanHost } from '../vlan-host.js';

/**
 * The CNI verbs, served by the daemon on behalf of the thin `netd` plugin (cni/plugin). A network
 * config names the VPC it attaches to, or the external network:
 *
 *   { "cniVersion": "1.1.0", "name": "vpc-acme.web", "type": "netd", "vpc": "acme.web" }
 *   { "cniVersion": "1.1.0", "name": "external", "type": "netd", "external": true }
 *
 * Reads come from the host's view (etcd watches), writes go through the attacher; while etcd is
 * away DEL and CHECK are still served from the last known state and ADD answers "try again".
 */

export interface CniServiceDeps {
  self: HostRecord;
  store: Store;
  runner: CommandRunner;
  hostNetns?: NetnsTarget;
  view: HostView;
  reconciler: Reconciler;
  attacher: Attacher;
  /** The external (eth0) network of this host; networks with "external": true need it. */
  external?: { pool: string; mode: ExternalMode };
  /** Why this host cannot attach containers to routed VPCs safely (they are refused), if it cannot. */
  routedRefusal?: string;
  /** This host's Open vSwitch bridge and trunk (vlan VPCs); none: vlan VPCs are refused here. */
  vlan?: VlanHost;
  /** The sources IPv6 routed ports may send from. */
  guard: SourceGuard;
  /** tagqueue's table on this host (eth0 and routed ports). */
  ports?: PortGuard;
  metrics?: NetdMetrics;
  logger: Logger;
}

export class CniService {
  private readonly hostIp: IpClient;
  /** Calls for one attachment never interleave (a runtime retrying an ADD still running, a DEL racing it). */
  private readonly attachments = new KeyedLock();

  constructor(private readonly deps: CniServiceDeps) {
    this.hostIp = new IpClient(deps.runner, deps.hostNetns);
  }

  async handle(env: Record<string, string | undefined>, stdin: string): Promise<CniReply> {
    const started = performance.now();
    const reply = await serveCniCall(env, stdin, (req) => {
      const serve = () => (req.config.external === true ? this.external(req) : this.internal(req));
      return req.command === 'ADD' || req.command === 'DEL' ? this.attachments.with(lockKey(req), serve) : serve();
    });
    const verb = reply.request?.command ?? 'invalid';
    this.deps.metrics?.observeCni(
      verb,
      reply.exitCode === 0 ? 'ok' : 'error',
      (performance.now() - started) / 1000,
      reply.error?.code,
    );
    return { exitCode: reply.exitCode, stdout: reply.stdout };
  }

  // ---- eth1: a VPC ---------------------------------------------------------------------------

  private async internal(req: CniRequest): Promise<unknown> {
    const vpcId = vpcOf(req);
    switch (req.command) {
      case 'ADD': {
        this.requireSynced();
        const vpc = await this.vpc(vpcId);
        const request = {
          containerId: req.containerId,
          ifname: req.ifname,
          netnsPath: req.netns,
          vpc,
          ...requested(req),
          cap: this.deps.view.pods.caps().eth1(vpc.name),
        };
        if (vpc.mode === 'routed') {
          if (this.deps.routedRefusal) throw new AppError(ErrorCodes.UNSUPPORTED, this.deps.routedRefusal);
          const { family, gateway, hostPrefix } = routedFamily(vpc.cidr);
          if (family === 6 && this.deps.self.underlayIp6 === undefined) {
            throw new AppError(
              ErrorCodes.UNSUPPORTED,
              `host ${this.deps.self.name} has no IPv6 underlay address (netd --underlay-ip6): it cannot route IPv6 VPC ${vpc.name} to other hosts`,
            );
          }
          const plan = routedInternalPlan(request, this.deps.self, {
            hostSysctl: new SysctlClient(this.deps.runner, this.deps.hostNetns),
            guard: this.deps.guard,
            ...(this.deps.ports && { ports: this.deps.ports }),
          });
          const done = await this.deps.attacher.attach(plan);
          // A retry that found the attachment complete guards its source again (idempotent): the
          // ADD that wired it may have died before its last step.
          if (done.existing) await plan.secure!(done.allocation);
          await this.settled(plan.recordKey, plan.hostIf, done);
          // The VPC's rule and table are in place before the answer (the first ADD here puts them).
          await this.deps.reconciler.wireRouted(vpc);
          return addResult(req, done, { address: `${done.allocation.ip}/${hostPrefix}`, gateway }, [
            { dst: vpc.cidr, gw: gateway },
          ]);
        }
        if (vpc.mode === 'vlan') {
          const vlanHost = this.servingVlan(vpc);
          const plan = vlanInternalPlan(request, this.deps.self, vlanHost, vpc.vlan!);
          const done = await this.deps.attacher.attach(plan);
          // A retry that found the attachment complete plugs it again (idempotent): the ADD that
          // wired it may have died before its last step.
          if (done.existing) await plan.finish!(done.allocation);
          await this.settled(plan.recordKey, plan.hostIf, done);
          return addResult(req, done, { address: done.allocation.cidr }, []);
        }
        const plan = internalPlan(request, this.deps.self, this.deps.reconciler.bridgeUp(vpc.vni));
        const done = await this.deps.attacher.attach(plan);
        await this.settled(plan.recordKey, plan.hostIf, done, linkNames.bridge(vpc.vni));
        return addResult(req, done, { address: done.allocation.cidr }, []);
      }
      case 'DEL': {
        const ids = [
          this.idOf(req),
          ...this.olderIds(
            req,
            this.deps.view.localEndpoints().filter((e) => e.vpc === vpcId),
          ),
        ];
        for (const id of ids) await this.detachInternal(vpcId, id, linkNames.internalPort(id));
        return undefined;
      }
      case 'CHECK':
        return this.check(
          req,
          modelKeys.endpoint(vpcId, this.idOf(req)),
          this.deps.view.localEndpoints().filter((e) => e.vpc === vpcId),
        );
      case 'STATUS':
        return this.status();
      case 'GC': {
        const keep = this.keep(req);
        for (const e of this.collectable(
          this.deps.view.localEndpoints().filter((x) => x.vpc === vpcId),
          keep,
        )) {
          await this.attachments.with(lockKey(e), () => this.detachInternal(vpcId, e.id, e.hostIf));
        }
        return undefined;
      }
      default:
        throw new AppError(ErrorCodes.INTERNAL, `unhandled CNI command ${String(req.command)}`);
    }
  }

  /** This host's VLAN side, when it can wire containers of `vpc` (else E_UNSUPPORTED, before anything is touched). */
  private servingVlan(vpc: VpcRecord): VlanHost {
    const vlanHost = this.deps.vlan;
    const capability = vlanHost?.capability;
    if (!vlanHost || !capability) {
      throw new AppError(
        ErrorCodes.UNSUPPORTED,
        `host ${this.deps.self.name} serves no vlan VPC: ${vlanHost?.refusal ?? 'netd runs without --vlan-trunk'}`,
      );
    }
    if (vpc.vlan === undefined || vpc.physnet !== capability.physnet) {
      throw new AppError(
        ErrorCodes.UNSUPPORTED,
        `VPC ${vpc.name} is on physical network ${vpc.physnet ?? '(none)'}; host ${this.deps.self.name}'s trunk is on ${capability.physnet}`,
      );
    }
    if (vpc.mtu !== undefined && vpc.mtu > capability.mtu) {
      throw new AppError(
        ErrorCodes.UNSUPPORTED,
        `VPC ${vpc.name}'s MTU ${vpc.mtu} exceeds host ${this.deps.self.name}'s trunk MTU ${capability.mtu} ` +
          '(frames would be dropped on the trunk without an ICMP error)',
      );
    }
    return vlanHost;
  }

  /** Removes one eth1 attachment; a vlan VPC's port also leaves the OVS bridge. */
  private async detachInternal(vpcId: string, id: string, hostIf: string): Promise<void> {
    const vpc = this.deps.view.vpc(vpcId);
    const vlan = vpc?.mode === 'vlan' ? this.deps.vlan : undefined;
    const leaveShaper = vlan?.shapes === true;
    const recorded = this.deps.view.localEndpoints().find((e) => e.id === id);
    await Promise.all([
      this.deps.attacher.detach({
        id,
        recordKey: modelKeys.endpoint(vpcId, id),
        hostIf,
        pool: vpcId,
        ...(leaveShaper && { leaveShaper }),
      }),
      vlan?.capability ? vlan.unplug(hostIf) : undefined,
    ]);
    // The reconciler collects what the DEL left (the shaper pair) at once, not at the next resync.
    if (leaveShaper) this.deps.reconciler.schedule();
    // An IPv6 routed port's guard elements go once the port is gone (its name may serve another
    // container next).
    if (vpc?.mode === 'routed' && recorded && routedFamily(vpc.cidr).family === 6)
      await this.deps.guard.remove({ port: hostIf, ip: recorded.ip });
    if (vpc?.mode === 'routed' && recorded)
      await this.deps.ports?.release({ port: hostIf, kind: 'routed', ip: recorded.ip, mac: recorded.mac });
  }

  // ---- eth0: the external network ------------------------------------------------------------

  private async external(req: CniRequest): Promise<unknown> {
    const configured = this.deps.external;
    // DEL, CHECK and GC work from the records (their pool included) even if the external network
    // was switched off since: a runtime's DEL must still succeed and free what it held.
    const needsPool = req.command === 'ADD' || req.command === 'STATUS';
    if (!configured && needsPool) {
      throw new CniFailure(
        CniErrorCodes.INVALID_NETWORK_CONFIG,
        'this host has no external network (netd runs without --external-pool)',
      );
    }
    const external = configured ?? { pool: '', mode: 'nat' as const };
    const { self } = this.deps;
    switch (req.command) {
      case 'ADD': {
        this.requireSynced();
        const plan = externalPlan(
          {
            containerId: req.containerId,
            ifname: req.ifname,
            netnsPath: req.netns,
            ...requested(req),
            cap: this.deps.view.pods.caps().eth0(self.name, req.containerId),
          },
          {
            self,
            pool: external.pool,
            mode: external.mode,
            runner: this.deps.runner,
            hostIp: this.hostIp,
            ...(this.deps.hostNetns && { hostNetns: this.deps.hostNetns }),
            ...(this.deps.ports && { ports: this.deps.ports }),
          },
        );
        const done = await this.deps.attacher.attach(plan);
        // A retry that found the attachment complete secures its port again (idempotent).
        if (done.existing) await plan.secure!(done.allocation);
        // eth0 is on no bridge and the ADD routed it and applied its limits: nothing to wait for.
        await this.settled(plan.recordKey, plan.hostIf, { ...done, joinedBridge: true });
        const ip = done.allocation.ip;
        return addResult(req, done, { address: `${ip}/32`, gateway: LINK_LOCAL_GATEWAY }, [
          { dst: '0.0.0.0/0', gw: LINK_LOCAL_GATEWAY },
        ]);
      }
      case 'DEL':
        for (const id of [this.idOf(req), ...this.olderIds(req, this.deps.view.localExternals())]) {
          await this.detachExternal(id);
        }
        return undefined;
      case 'CHECK':
        return this.check(req, modelKeys.external(self.name, this.idOf(req)), this.deps.view.localExternals());
      case 'STATUS':
        return this.status();
      case 'GC': {
        const keep = this.keep(req);
        for (const e of this.collectable(this.deps.view.localExternals(), keep)) {
          await this.attachments.with(lockKey(e), () => this.detachExternal(e.id));
        }
        return undefined;
      }
      default:
        throw new AppError(ErrorCodes.INTERNAL, `unhandled CNI command ${String(req.command)}`);
    }
  }

  private async detachExternal(id: string): Promise<undefined> {
    const key = modelKeys.external(this.deps.self.name, id);
    const record = (await this.record(key)) as ExternalEndpointRecord | undefined;
    // The uplink stops answering for the address (routed mode) in the batch that deletes the pair,
    // before the address can go to someone else; in NAT mode there is no entry and this is a no-op.
    const address = record?.ip;
    const uplink = this.deps.self.uplink;
    await this.deps.attacher.detach({
      id,
      recordKey: key,
      hostIf: linkNames.externalPort(id),
      // The record's pool; without a record, whatever pool the handle holds an address in.
      ...((record?.pool ?? this.deps.external?.pool) && { pool: record?.pool ?? this.deps.external!.pool }),
      ...(address !== undefined && { extraHostLines: (b: IpBatch) => b.proxyNeighDel(address, uplink) }),
    });
    if (record)
      await this.deps.ports?.release({ port: record.hostIf, kind: 'external', ip: record.ip, mac: record.mac });
    return undefined;
  }

  /**
   * GC: the local records not to keep. Records without a container id were not written by a CNI
   * ADD (another tool's): not the runtime's to collect. Ports an ADD is wiring right now are not
   * collected either (its record is in the view before it is in etcd).
   */
  private collectable<R extends AttachmentRecord>(local: readonly R[], keep: (r: AttachmentRecord) => boolean): R[] {
    return local.filter((r) => r.containerId !== undefined && !keep(r) && !this.deps.reconciler.claims.has(r.hostIf));
  }

  // ---- shared --------------------------------------------------------------------------------

  /** The endpoint id of this request: this host, the runtime's container id and interface. */
  private idOf(req: CniRequest): string {
    return endpointId({
      host: this.deps.self.name,
      containerId: checkSegment('containerId', req.containerId),
      ifname: req.ifname,
    });
  }

  /**
   * GC: whether a local record is one of the attachments the runtime still has. Matched by
   * container id and interface (which every record netd writes carries), so records written under
   * an older id form are kept alike.
   */
  private keep(req: CniRequest): (r: AttachmentRecord) => boolean {
    const valid = new Set(validAttachments(req.config).map((a) => `${a.containerId}\0${a.ifname}`));
    const ids = new Set(validAttachments(req.config).map((a) => endpointId({ host: this.deps.self.name, ...a })));
    return (r) => ids.has(r.id) || valid.has(`${r.containerId}\0${r.ifname}`);
  }

  /**
   * Ids of this attachment's records under an older id form (`<containerId>:<ifname>`, before ids
   * carried the host): a DEL after an upgrade finds them too, so no host needs draining first.
   */
  private olderIds(req: CniRequest, local: readonly AttachmentRecord[]): string[] {
    const current = this.idOf(req);
    return local
      .filter((r) => r.id !== current && r.containerId === req.containerId && r.ifname === req.ifname)
      .map((r) => r.id);
  }

  /** After an ADD: the record is part of the view at once; its port is complete or converged now. */
  private async settled(key: string, hostIf: string, done: Attached<AttachmentRecord>, bridge?: string): Promise<void> {
    this.deps.view.note(key, done.record);
    const complete = this.deps.reconciler.noteWired(hostIf, {
      joinedBridge: done.joinedBridge,
      ...(done.qosApplied && { qos: done.qosApplied }),
      wiredNow: !done.existing,
    });
    if (complete || bridge === undefined) return;
    // The port still needs its bridge (the first ADD into this VPC on the host): that bridge alone
    // is put in place, reading only its own links.
    const onBridge = await this.deps.reconciler.wireBridge(bridge, hostIf).catch((err: unknown) => {
      this.deps.logger.warn({ err: describeError(err), bridge, port: hostIf }, 'wiring the bridge alone failed');
      return false;
    });
    if (onBridge) return;
    // Else one full run, then this port is judged alone (an unrelated failure elsewhere on the
    // host is not this ADD's).
    await this.deps.reconciler.converge();
    const port = await this.hostIp.link(hostIf);
    if (port?.master !== bridge) {
      throw new CniFailure(
        CniErrorCodes.TRY_AGAIN_LATER,
        `${hostIf} is not on ${bridge} yet${this.deps.reconciler.lastError ? ` (${this.deps.reconciler.lastError})` : ''}`,
      );
    }
  }

  /** CHECK: the recorded attachment is complete (served from the last known view while etcd is away). */
  private async check(req: CniRequest, key: string, local: readonly AttachmentRecord[]): Promise<undefined> {
    const record =
      (await this.record(key)) ?? local.find((r) => r.containerId === req.containerId && r.ifname === req.ifname);
    if (!record)
      throw new CniFailure(CniErrorCodes.CONTAINER_UNKNOWN, `no attachment for ${req.containerId}/${req.ifname}`);
    const why = await this.deps.attacher.whyNotWired({ ...record, netns: req.netns, ifname: req.ifname });
    if (why)
      throw new CniFailure(CniErrorCodes.CONTAINER_UNKNOWN, `${req.ifname} in ${req.netns}: ${why} (${record.ip})`);
    return undefined;
  }

  private status(): undefined {
    if (!this.deps.view.synced) {
      throw new CniFailure(CniErrorCodes.PLUGIN_NOT_AVAILABLE, 'netd is not in sync with etcd; ADD would fail');
    }
    return undefined;
  }

  /** ADD needs etcd: while netd is out of sync with it, the runtime is told to try again. */
  private requireSynced(): void {
    if (!this.deps.view.synced) {
      throw new CniFailure(CniErrorCodes.TRY_AGAIN_LATER, 'netd is not in sync with etcd (unreachable?); try again');
    }
  }

  /** A record from the view (last known, in sync or not); from etcd only when the view cannot tell. */
  private async record(key: string): Promise<AttachmentRecord | undefined> {
    const known = this.deps.view.lastKnown(key);
    if (known || this.deps.view.synced) return known;
    const kv = await this.deps.store.get(key).catch(() => undefined);
    return kv ? (JSON.parse(kv.value) as AttachmentRecord) : undefined;
  }

  private async vpc(id: string): Promise<VpcRecord> {
    const known = this.deps.view.vpc(id);
    if (known) return known;
    throw new AppError(ErrorCodes.NOT_FOUND, `no VPC "${id}"`, { vpc: id });
  }
}

/** The lock of one attachment: the runtime's container id and interface (on this host). */
function lockKey(a: { containerId?: string; ifname?: string }): string {
  return `${a.containerId ?? ''}\0${a.ifname ?? ''}`;
}

function vpcOf(req: CniRequest): string {
  const vpc = req.config.vpc;
  if (typeof vpc !== 'string' || vpc === '') {
    throw new CniFailure(
      CniErrorCodes.INVALID_NETWORK_CONFIG,
      'network config needs "vpc": the id of the VPC to attach to',
    );
  }
  return checkSegment('vpc', vpc);
}

/** Static address, MAC and rate limits asked for by the runtime, checked before anything is touched. */
function requested(req: CniRequest): { ip?: string; mac?: string; qos?: QosSpec } {
  const ips = req.config.runtimeConfig?.ips;
  const ip = Array.isArray(ips) && typeof ips[0] === 'string' ? ips[0].split('/')[0] : req.args.IP;
  const mac = typeof req.config.runtimeConfig?.mac === 'string' ? req.config.runtimeConfig.mac : req.args.MAC;
  if (mac !== undefined && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) {
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, `"${mac}" is not a MAC address`);
  }
  if (ip !== undefined) parseIp(ip);
  const qos = fromBandwidthCapability(req.config.runtimeConfig?.bandwidth);
  return { ...(ip !== undefined && { ip }), ...(mac !== undefined && { mac }), ...(qos && { qos }) };
}

/**
 * The ADD result: every interface the attachment made — the host end of the veth (no sandbox) and
 * the container's — so plugins chained after netd (bandwidth, portmap, tuning, firewall) find both.
 */
function addResult(
  req: CniRequest,
  done: Attached<AttachmentRecord>,
  ip: { address: string; gateway?: string },
  routes: Array<{ dst: string; gw?: string }>,
): CniResult {
  const legacy = req.config.cniVersion.startsWith('0.');
  return {
    cniVersion: req.config.cniVersion,
    interfaces: [{ name: done.record.hostIf }, { name: req.ifname, mac: done.record.mac, sandbox: req.netns }],
    ips: [{ ...(legacy && { version: ip.address.includes(':') ? '6' : '4' }), ...ip, interface: 1 }],
    routes,
    dns: {},
  };
}
