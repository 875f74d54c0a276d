/**
 * The address of the client behind a request: the TCP peer, unless the peer is a reverse proxy
 * the operator trusts (`trustProxy`), in which case the proxies' `X-Forwarded-For` says who it
 * forwarded. Behind a proxy every connection comes from the proxy's address, so without this the
 * per-address limits (`maxSessionsPerIp`, `maxWebsocketsPerIp`, `maxSubscriptionsPerIp`,
 * `handshakeRate`) would count all its clients as one.
 *
 * `X-Forwarded-For` is a list that each proxy extends with the address it received the request
 * from (nginx's `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`, cloud balancers).
 * Anything left of the first hop a trusted proxy added may be written by the client, so the list
 * is read from the right: the client is the first address that is not a trusted proxy. A hop that
 * is not an address (`unknown`, an obfuscated name) ends the walk at the proxy that wrote it.
 *
 * A trusted proxy that sends no `X-Forwarded-For` may say the same in the standard `Forwarded`
 * header (RFC 7239 §5.2, its `for=` parameters, read the same way), or name only the client it
 * received the request from in `X-Real-IP` (nginx's `proxy_set_header X-Real-IP $remote_addr`,
 * a configuration often copied without the other): read in that order, the first one present.
 */
import { BlockList, isIP } from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';

/** Names for the ranges proxies usually sit in. */
const RANGES: Record<string, readonly [string, number, 'ipv4' | 'ipv6'][]> = {
  loopback: [
    ['127.0.0.0', 8, 'ipv4'],
    ['::1', 128, 'ipv6'],
  ],
  // RFC 1918 and IPv6 unique local addresses (RFC 4193): a private network, a container bridge.
  private: [
    ['10.0.0.0', 8, 'ipv4'],
    ['172.16.0.0', 12, 'ipv4'],
    ['192.168.0.0', 16, 'ipv4'],
    ['fc00::', 7, 'ipv6'],
  ],
};

const familyOf = (address: string): 'ipv4' | 'ipv6' | undefined => {
  const version = isIP(address);
  return version === 4 ? 'ipv4' : version === 6 ? 'ipv6' : undefined;
};

/** Why `entry` cannot name trusted proxies, or undefined when it can: an address, a range (`10.0.0.0/8`) or a name of RANGES. */
export function proxyEntryProblem(entry: string): string | undefined {
  if (Object.hasOwn(RANGES, entry)) return undefined;
  const [address = '', prefix, extra] = entry.split('/');
  const family = familyOf(address);
  const widest = family === 'ipv4' ? 32 : 128;
  if (family !== undefined && extra === undefined && (prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= widest))) return undefined;
  return `${JSON.stringify(entry)} is not an address, a range (10.0.0.0/8, fd00::/8), loopback or private`;
}

/** One hop (of X-Forwarded-For, Forwarded's for=, X-Real-IP) as an address: without the port some proxies add, or undefined. */
function hopAddress(hop: string): string | undefined {
  let address = hop.trim();
  // "[2001:db8::1]:443" and "[2001:db8::1]"; "192.0.2.1:8080".
  if (address.startsWith('[')) {
    const end = address.indexOf(']');
    address = address.slice(1, end === -1 ? undefined : end);
  }
  else if (address.includes('.') && address.indexOf(':') === address.lastIndexOf(':')) address = address.split(':')[0]!;
  return familyOf(address) !== undefined ? address : undefined;
}

/** The `for=` of one element of `Forwarded` ("for=192.0.2.60;proto=http"), unquoted; '' without one. */
function forwardedFor(element: string): string {
  for (const pair of element.split(';')) {
    const equals = pair.indexOf('=');
    if (equals === -1 || pair.slice(0, equals).trim().toLowerCase() !== 'for') continue;
    const value = pair.slice(equals + 1).trim();
    return value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1) : value;
  }
  return '';
}

/**
 * The client addresses the proxies name, nearest last: `X-Forwarded-For`, else the `for=` of each
 * element of `Forwarded`, else `X-Real-IP`; null when none is present.
 */
function forwardedHops(headers: IncomingHttpHeaders): string[] | null {
  const list = headers['x-forwarded-for'];
  if (typeof list === 'string') return list.split(',');
  const forwarded = headers.forwarded;
  if (typeof forwarded === 'string') return forwarded.split(',').map(forwardedFor);
  const real = headers['x-real-ip'];
  if (typeof real === 'string') return [real];
  return null;
}

export class ProxyTrust {
  /** Null when no proxy is trusted: the peer is the client, and no header is read. */
  private readonly trusted: BlockList | null;

  /** `entries` as `proxyEntryProblem` accepts them (options.ts checked them). */
  constructor(entries: readonly string[]) {
    if (entries.length === 0) {
      this.trusted = null;
      return;
    }
    const list = new BlockList();
    for (const entry of entries) {
      for (const [network, prefix, family] of RANGES[entry] ?? []) list.addSubnet(network, prefix, family);
      if (Object.hasOwn(RANGES, entry)) continue;
      const [address = '', prefix] = entry.split('/');
      const family = familyOf(address)!;
      if (prefix === undefined) list.addAddress(address, family);
      else list.addSubnet(address, Number(prefix), family);
    }
    this.trusted = list;
  }

  private trusts(address: string): boolean {
    const family = familyOf(address);
    return family !== undefined && this.trusted!.check(address, family);
  }

  /** The client's address for a request from `peer` (the socket's remote address) with `headers`. */
  clientAddress(peer: string | undefined, headers: IncomingHttpHeaders): string | undefined {
    if (this.trusted === null || peer === undefined || !this.trusts(peer)) return peer;
    const hops = forwardedHops(headers);
    if (hops === null) return peer;
    let client = peer;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hopAddress(hops[i]!);
      if (hop === undefined) return client;
      client = hop;
      if (!this.trusts(hop)) return hop;
    }
    // Every hop is a trusted proxy: the first one is as near the client as can be told.
    return client;
  }
}
