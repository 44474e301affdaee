// HMAC-SHA-256 codes for authenticated frames, with the SHA-256 compression function in portable C and, where
// the processor has them, the x86 SHA extensions (SHA-NI). QuorumCore's Swift SHA-256/HMAC/HKDF (tested against
// the FIPS 180-4 and RFC 4231/5869 vectors) does everything else; this file exists only for the per-frame code,
// which is several times faster with the extensions, and is tested against the Swift implementation.
#include "CQuorumSystem.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

// FIPS 180-4 §4.2.2.
static const uint32_t cq_k[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

// FIPS 180-4 §5.3.3.
static const uint32_t cq_iv[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

static inline uint32_t cq_rotr(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

static inline uint32_t cq_load_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline void cq_store_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

void cq_sha256_compress_portable(uint32_t state[8], const uint8_t *data, size_t blocks) {
  uint32_t w[64];
  while (blocks--) {
    for (int t = 0; t < 16; t++) w[t] = cq_load_be32(data + 4 * t);
    for (int t = 16; t < 64; t++) {
      uint32_t s0 = cq_rotr(w[t - 15], 7) ^ cq_rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      uint32_t s1 = cq_rotr(w[t - 2], 17) ^ cq_rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = s1 + w[t - 7] + s0 + w[t - 16];
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int t = 0; t < 64; t++) {
      uint32_t t1 = h + (cq_rotr(e, 6) ^ cq_rotr(e, 11) ^ cq_rotr(e, 25)) + ((e & f) ^ (~e & g)) + cq_k[t] + w[t];
      uint32_t t2 = (cq_rotr(a, 2) ^ cq_rotr(a, 13) ^ cq_rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
    data += 64;
  }
}

#if defined(__x86_64__)
// The SHA extensions keep the working variables as two vectors, (A, B, E, F) and (C, D, G, H); each
// SHA256RNDS2 does two rounds, and SHA256MSG1/SHA256MSG2 extend the message schedule four words at a time:
// W[4i..4i+3] = msg2(msg1(W[4i-16..], W[4i-12..]) + W[4i-7..4i-4], W[4i-4..4i-1]).
__attribute__((target("sha,sse4.1,ssse3"))) static void cq_sha256_compress_shani(uint32_t state[8], const uint8_t *data,
                                                                                 size_t blocks) {
  const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);  // big-endian words
  __m128i dcba = _mm_loadu_si128((const __m128i *)&state[0]);
  __m128i hgfe = _mm_loadu_si128((const __m128i *)&state[4]);
  __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
  __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
  __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
  __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
  while (blocks--) {
    const __m128i savedABEF = abef, savedCDGH = cdgh;
    __m128i w[4];
    for (int i = 0; i < 16; i++) {
      __m128i words;
      if (i < 4) {
        words = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * i)), swap);
      } else {
        // w[i % 4] holds W[4i-16..], w[(i+1) % 4] W[4i-12..], w[(i+2) % 4] W[4i-8..], w[(i+3) % 4] W[4i-4..].
        words = _mm_sha256msg1_epu32(w[i % 4], w[(i + 1) % 4]);
        words = _mm_add_epi32(words, _mm_alignr_epi8(w[(i + 3) % 4], w[(i + 2) % 4], 4));
        words = _mm_sha256msg2_epu32(words, w[(i + 3) % 4]);
      }
      w[i % 4] = words;
      __m128i message = _mm_add_epi32(words, _mm_load_si128((const __m128i *)&cq_k[4 * i]));
      cdgh = _mm_sha256rnds2_epu32(cdgh, abef, message);
      message = _mm_shuffle_epi32(message, 0x0E);
      abef = _mm_sha256rnds2_epu32(abef, cdgh, message);
    }
    abef = _mm_add_epi32(abef, savedABEF);
    cdgh = _mm_add_epi32(cdgh, savedCDGH);
    data += 64;
  }
  __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
  __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
  _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(feba, dchg, 0xF0));
  _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, feba, 8));
}

static int cq_cpu_has_shani(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  if (!(c & (1u << 9)) || !(c & (1u << 19))) return 0;  // SSSE3, SSE4.1
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  return (b >> 29) & 1;  // SHA
}
#endif

// -1: not decided yet; 0: portable; 1: SHA extensions. Written once (or by tests, between equivalent choices).
static int cq_sha256_mode = -1;

int cq_sha256_accelerated(void) {
  int mode = __atomic_load_n(&cq_sha256_mode, __ATOMIC_RELAXED);
  if (mode < 0) {
#if defined(__x86_64__)
    mode = cq_cpu_has_shani();
#else
    mode = 0;
#endif
    __atomic_store_n(&cq_sha256_mode, mode, __ATOMIC_RELAXED);
  }
  return mode;
}

int cq_sha256_use_accelerated(int enabled) {
  __atomic_store_n(&cq_sha256_mode, -1, __ATOMIC_RELAXED);
  int available = cq_sha256_accelerated();
  __atomic_store_n(&cq_sha256_mode, enabled && available, __ATOMIC_RELAXED);
  return available;
}

void cq_sha256_compress(uint32_t state[8], const uint8_t *data, size_t blocks) {
#if defined(__x86_64__)
  if (cq_sha256_accelerated()) {
    cq_sha256_compress_shani(state, data, blocks);
    return;
  }
#endif
  cq_sha256_compress_portable(state, data, blocks);
}

// Hashes `prefix` (at most 64 bytes) then `data` onward from `state`, which has absorbed `absorbed` bytes
// (a multiple of 64), and writes the digest.
static void cq_sha256_finish(uint32_t state[8], uint64_t absorbed, const uint8_t *prefix, size_t prefixLength,
                             const uint8_t *data, size_t length, uint8_t digest[32]) {
  uint8_t block[128];
  size_t buffered = prefixLength;
  if (prefixLength) memcpy(block, prefix, prefixLength);
  uint64_t total = absorbed + prefixLength + length;
  if (buffered + length >= 64) {
    size_t fill = 64 - buffered;
    memcpy(block + buffered, data, fill);
    cq_sha256_compress(state, block, 1);
    data += fill;
    length -= fill;
    size_t whole = length / 64;
    if (whole) cq_sha256_compress(state, data, whole);
    data += whole * 64;
    length -= whole * 64;
    buffered = 0;
  }
  if (length) memcpy(block + buffered, data, length);
  buffered += length;
  block[buffered++] = 0x80;
  size_t padded = buffered <= 56 ? 64 : 128;
  memset(block + buffered, 0, padded - 8 - buffered);
  uint64_t bits = total * 8;
  for (int i = 0; i < 8; i++) block[padded - 1 - i] = (uint8_t)(bits >> (8 * i));
  cq_sha256_compress(state, block, padded / 64);
  for (int i = 0; i < 8; i++) cq_store_be32(digest + 4 * i, state[i]);
}

void cq_hmac_sha256_init(const uint8_t *key, size_t length, uint32_t inner[8], uint32_t outer[8]) {
  uint8_t padded[64] = {0};
  if (length > 64) {
    uint32_t state[8];
    memcpy(state, cq_iv, sizeof state);
    cq_sha256_finish(state, 0, NULL, 0, key, length, padded);
  } else if (length > 0) {
    memcpy(padded, key, length);
  }
  uint8_t block[64];
  for (int i = 0; i < 64; i++) block[i] = padded[i] ^ 0x36;
  memcpy(inner, cq_iv, 32);
  cq_sha256_compress(inner, block, 1);
  for (int i = 0; i < 64; i++) block[i] = padded[i] ^ 0x5c;
  memcpy(outer, cq_iv, 32);
  cq_sha256_compress(outer, block, 1);
}

void cq_hmac_sha256_frame(const uint32_t inner[8], const uint32_t outer[8], uint64_t sequence, const uint8_t *data,
                          size_t length, uint8_t code[32]) {
  uint8_t prefix[8];
  for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)(sequence >> (8 * i));
  uint32_t state[8];
  memcpy(state, inner, sizeof state);
  uint8_t innerDigest[32];
  cq_sha256_finish(state, 64, prefix, 8, data, length, innerDigest);
  memcpy(state, outer, sizeof state);
  cq_sha256_finish(state, 64, innerDigest, 32, NULL, 0, code);
}
