/**
 * UUIDs as 32 lowercase hex characters (the Django `UUIDField` form on MySQL), many at a time from one
 * buffer of CSPRNG bytes: one `randomFillSync` and one hex encoding per batch, not per id.
 */
import { randomFillSync } from "node:crypto"

const hexOf = (bytes: Uint8Array, count: number): Array<string> => {
  const hex = Buffer.from(bytes.buffer, bytes.byteOffset, count * 16).toString("hex")
  const out = new Array<string>(count)
  for (let i = 0; i < count; i++) out[i] = hex.slice(i * 32, i * 32 + 32)
  return out
}

/** `count` random (version 4) UUIDs: 122 bits from node:crypto each. */
export const v4 = (count: number): Array<string> => {
  const bytes = randomFillSync(new Uint8Array(count * 16))
  for (let i = 0; i < count; i++) {
    const o = i * 16
    bytes[o + 6] = (bytes[o + 6]! & 0x0f) | 0x40
    bytes[o + 8] = (bytes[o + 8]! & 0x3f) | 0x80
  }
  return hexOf(bytes, count)
}

/**
 * `count` time-ordered (version 7) UUIDs for new rows: increasing within the batch (the 12-bit counter
 * `rand_a` runs on, carrying into the millisecond), so that inserts append to the primary key's B-tree.
 */
export const v7 = (count: number, nowMillis: number): Array<string> => {
  const bytes = randomFillSync(new Uint8Array(count * 16))
  for (let i = 0; i < count; i++) {
    const o = i * 16
    const ms = nowMillis + Math.floor(i / 4096)
    const seq = i % 4096
    bytes[o] = Math.floor(ms / 2 ** 40) & 0xff
    bytes[o + 1] = Math.floor(ms / 2 ** 32) & 0xff
    bytes[o + 2] = (ms >>> 24) & 0xff
    bytes[o + 3] = (ms >>> 16) & 0xff
    bytes[o + 4] = (ms >>> 8) & 0xff
    bytes[o + 5] = ms & 0xff
    bytes[o + 6] = 0x70 | (seq >>> 8)
    bytes[o + 7] = seq & 0xff
    bytes[o + 8] = (bytes[o + 8]! & 0x3f) | 0x80
  }
  return hexOf(bytes, count)
}
