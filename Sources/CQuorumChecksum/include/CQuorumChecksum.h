// CRC-32C with the processor's own instruction, where it has one (SSE 4.2 on x86-64).
#ifndef CQUORUM_CHECKSUM_H
#define CQUORUM_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/// 1 if `cq_crc32c` runs on a CRC-32C instruction of this processor, 0 if it must not be called.
int cq_crc32c_available(void);

/// The CRC-32C of `count` bytes at `bytes`, continuing from `crc` (0 to start). Call only where
/// `cq_crc32c_available()` is 1.
uint32_t cq_crc32c(uint32_t crc, const void *bytes, size_t count);

#endif
