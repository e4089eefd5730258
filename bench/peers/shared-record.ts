import { AppError, ErrorCodes } from '../../core/errors.js';
import { addressAt, cidrSize, formatIp, parseCidr } from '../../core/cidr.js';
import type { Store } from '../../store/types.js';

/**
 * The baseline design for the ipam benchmark (Whereabouts): every allocation in a pool is one
 * compare-and-swap on a single shared record holding all of the pool's allocations. Correct, but
 * every allocator in the cluster contends for that one key.
 */
export class SharedRecordAllocator {
  private readonly key: string;

  constructor(
    private readonly store: Store,
    private readonly cidr: string,
    pool: string,
  ) {
    this.key = `/bench/shared-record/${pool}`;
  }

  async allocate(handle: string): Promise<string> {
    const cidr = parseCidr(this.cidr);
    const size = Number(cidrSize(cidr));
    for (let attempt = 0; attempt < 10_000; attempt++) {
      const kv = await this.store.get(this.key);
      const taken = kv ? (JSON.parse(kv.value) as Record<string, string>) : {};
      let offset = 2; // skip network and gateway, as Whereabouts does by default
      while (offset < size - 1 && taken[String(offset)] !== undefined) offset++;
      if (offset >= size - 1) throw new AppError(ErrorCodes.POOL_EXHAUSTED, 'pool exhausted');
      taken[String(offset)] = handle;
      const { succeeded } = await this.store.txn({
        compare: [{ key: this.key, target: 'modRevision', op: '=', value: kv?.modRevision ?? 0n }],
        success: [{ type: 'put', key: this.key, value: JSON.stringify(taken) }],
      });
      if (succeeded) return formatIp(addressAt(cidr, offset));
    }
    throw new AppError(ErrorCodes.CONFLICT, 'lost too many races');
  }
}
