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

/** The tc commands that make `port` (and its ifb) carry exactly `q` (removing what `q` lacks). */
export function qosBatch(port: string, ifb: string, q: QosSpec | undefined, previous: QosSpec | undefined): TcBatch {
  const b = new TcBatch();
  if (q?.ingressBps !== undefined) b.rootTbf(port, tbfFor(q.ingressBps));
  else if (previous?.ingressBps !== undefined) b.deleteRoot(port);
  if (q?.egressBps !== undefined) {
    if (previous?.egressBps === undefined) b.ingress(port).redirectIngressTo(port, ifb);
    b.rootTbf(ifb, tbfFor(q.egressBps));
  } else if (previous?.egressBps !== undefined) {
    b.deleteIngress(port);
  }
  return b;
}
