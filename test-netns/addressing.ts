import { formatIp, parseIp } from '../core/cidr.js';
import { invalidInput } from '../core/errors.js';

/**
 * The underlay plan of a virtual cluster: one /24, the fabric's control address (.1, where etcd
 * listens; further etcd members at .2 to .9), hosts from .11 up, the outside world at .254. Every cluster lives in its own namespaces,
 * so parallel clusters reuse the same plan without meeting.
 */
export interface UnderlayPlan {
  cidr: string;
  prefixLength: number;
  /** The same segment's IPv6 /64 (hosts and the outside world hold one address each in it too). */
  cidr6: string;
  hostIp6(index: number): string;
  outsideIp6: string;
  controlIp: string;
  outsideIp: string;
  hostIp(index: number): string;
  /** etcd member `index` (0: the control address). */
  etcdIp(index: number): string;
}

export const MAX_HOSTS = 200;
export const MAX_ETCD_MEMBERS = 9;

/** As the kernel prints it (fd00:10:77:0::11 is fd00:10:77::11), so addresses compare as text. */
function canonical6(text: string): string {
  return formatIp(parseIp(text));
}

export function underlayPlan(base = '10.77.0.0'): UnderlayPlan {
  const octets = base.split('.').map(Number);
  if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255) || octets[3] !== 0) {
    throw invalidInput(`underlay base "${base}" must be an IPv4 /24 network address like 10.77.0.0`);
  }
  const stem = octets.slice(0, 3).join('.');
  // fd00:A:B:C::/64 for A.B.C.0/24: the v4 octets written as groups, a host's last group its v4 one.
  const stem6 = `fd00:${octets.slice(0, 3).join(':')}`;
  const hostOctet = (index: number): string => {
    if (!Number.isInteger(index) || index < 0 || index >= MAX_HOSTS) {
      throw invalidInput(`host index ${index} outside 0..${MAX_HOSTS - 1}`);
    }
    return String(11 + index);
  };
  return {
    cidr: `${stem}.0/24`,
    prefixLength: 24,
    cidr6: canonical6(`${stem6}::`) + '/64',
    hostIp6: (index) => canonical6(`${stem6}::${hostOctet(index)}`),
    outsideIp6: canonical6(`${stem6}::254`),
    controlIp: `${stem}.1`,
    outsideIp: `${stem}.254`,
    hostIp: (index) => `${stem}.${hostOctet(index)}`,
    etcdIp(index: number): string {
      if (!Number.isInteger(index) || index < 0 || index >= MAX_ETCD_MEMBERS) {
        throw invalidInput(`etcd member index ${index} outside 0..${MAX_ETCD_MEMBERS - 1}`);
      }
      return `${stem}.${1 + index}`;
    },
  };
}
