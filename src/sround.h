/* sround: stochastic rounding of fp32 to bf16, shared by the CPU backend
 * (ops_cpu.c) and the CUDA kernels (kernels/optim.cu) so that both round
 * with the same random numbers and can be compared bit for bit.
 *
 * The random number of element i of optimizer step t is a hash of
 * (i, seed(t)): i is the element's offset in the whole parameter block, so
 * the rounding does not depend on how the block is cut into shards or
 * pieces, nor on the number of ranks.  Rounding: keep the upper 16 bits of
 * the fp32 pattern (the bf16 number below |x|), and step to the next bf16
 * magnitude with probability (lower 16 bits) / 65536, which makes the
 * expectation exactly x for every finite x. */
#ifndef VL_SROUND_H
#define VL_SROUND_H

#include <stdint.h>

#ifdef __CUDACC__
#define VL_SR_FN __host__ __device__ __forceinline__
#else
#define VL_SR_FN static inline
#endif

/* A 64-bit mix (the splitmix64 finaliser constants), folded to 32 bits. */
VL_SR_FN uint32_t vl_sr_hash(uint64_t index, uint64_t seed) {
  uint64_t z = index * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (uint32_t)(z ^ (z >> 32));
}

/* Seed of optimizer step t (1-based) of a run with seed `seed`. */
VL_SR_FN uint64_t vl_sr_step_seed(uint64_t seed, int t) {
  return (uint64_t)vl_sr_hash((uint64_t)(uint32_t)t, seed ^ 0x5DEECE66Dull) << 32 |
         vl_sr_hash((uint64_t)(uint32_t)t + 0x632BE5ABull, seed);
}

/* The bf16 bit pattern of x rounded stochastically with random bits r. */
VL_SR_FN uint16_t vl_sr_bf16_bits(float x, uint32_t r) {
  union { float f; uint32_t u; } b;
  b.f = x;
  if ((b.u & 0x7F800000u) == 0x7F800000u) /* inf stays, NaN stays NaN */
    return (uint16_t)((b.u >> 16) | ((b.u & 0xFFFFu) ? 0x40u : 0u));
  uint32_t hi = b.u >> 16, lo = b.u & 0xFFFFu;
  if (lo > (r & 0xFFFFu)) hi += 1; /* P = lo / 65536; may reach inf past the largest */
  return (uint16_t)hi;
}

/* The same, as the fp32 value of that bf16 number (the CPU backend's storage). */
VL_SR_FN float vl_sr_bf16_float(float x, uint32_t r) {
  union { float f; uint32_t u; } b;
  b.u = (uint32_t)vl_sr_bf16_bits(x, r) << 16;
  return b.f;
}

#endif
