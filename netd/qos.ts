import { TcBatch } from '../sys/tc.js';
import { checkQos } from '../tenancy/qos.js';
import type { QosSpec } from '../tenancy/records.js';

/**
 * Per-interface rate limits, both directions, with what this kernel has (no act_police): traffic
 * into the container is shaped by a tbf on the host-side veth (its egress); traffic out of the
 * container arrives on the host-side veth's ingress, is redirected (u32 match-all + mirred) to an
 * ifb, and shaped by a tbf there. Changing a rate is a `qdisc replace`: flows keep running.
 */

/**
 * tbf parameters for a rate: the bucket holds 10 ms of traffic (at least 32 KiB, so one tick of a
 * 250 Hz timer never starves the queue at high rates), and the queue 50 ms. Rates are IP-layer
 * rates, as providers meter them: a size table takes the 14-byte Ethernet header off each packet.
 */
export function tbfFor(rateBps: number): {
  rateBps: number;
  burstBytes: number;
  latencyMs: number;
  overheadBytes: number;
} {
  return { rateBps, burstBytes: Math.max(32 * 1024, Math.ceil(rateBps / 8 / 100)), latencyMs: 50, overheadBytes: -14 };
}

/** CNI's bandwidth capability (rates in bits/s) to a QosSpec. */
export function fromBandwidthCapability(bw: unknown): QosSpec | undefined {
  if (!bw || typeof bw !== 'object') return undefined;
  const b = bw as { ingressRate?: unknown; egressRate?: unknown };
  const num = (v: unknown) => (typeof v === 'number' ? v : undefined);
  return checkQos({
    ...(num(b.ingressRate) !== undefined && { ingressBps: num(b.ingressRate) }),
    ...(num(b.egressRate) !== undefined && { egressBps: num(b.egressRate) }),
  });
}

/**
 * A vlan port's shaper veth (OVS's userspace datapath; vlan-host.ts): everything arriving on the
 * port leaves through the shaper, and everything arriving on the shaper leaves through the port.
 * Idempotent (fixed filter handles).
 */
export function shaperRedirects(port: string, shaper: string, b = new TcBatch()): TcBatch {
  return b.ingress(port).redirectIngressTo(port, shaper).ingress(shaper).redirectIngressTo(shaper, port);
}

/**
 * The tc commands that make `port` (and its ifb) carry exactly `q` (removing what `q` lacks).
 * `shaper`: the egress device is a vlan port's shaper veth, whose redirects exist for as long as
 * the port (vlan-host.ts): only its root qdisc changes.
 */
export function qosBatch(
  port: string,
  ifb: string,
  q: QosSpec | undefined,
  previous: QosSpec | undefined,
  opts: { shaper?: boolean } = {},
  b = new TcBatch(),
): TcBatch {
  if (q?.ingressBps !== undefined) b.rootTbf(port, tbfFor(q.ingressBps));
  else if (previous?.ingressBps !== undefined) b.deleteRoot(port);
  if (q?.egressBps !== undefined) {
    if (previous?.egressBps === undefined && !opts.shaper) b.ingress(port).redirectIngressTo(port, ifb);
    b.rootTbf(ifb, tbfFor(q.egressBps));
  } else if (previous?.egressBps !== undefined) {
    if (opts.shaper) b.deleteRoot(ifb);
    else b.deleteIngress(port);
  }
  return b;
}
