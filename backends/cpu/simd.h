/*
 * SIMD intrinsics for the CPU kernels. Normally the compiler's own header (<immintrin.h> on x86,
 * <arm_neon.h> on ARM). With BSI_SIMDE defined (tests/emulated only), SIMDe (SIMD Everywhere)
 * instead, with its native aliases, so the AVX-512 and NEON kernels compile and run on any host:
 * <simde/arm/neon.h> when BSI_SIMDE_NEON is defined too, <simde/x86/avx512.h> otherwise.
 */
#ifndef BONSAI_CPU_SIMD_H
#define BONSAI_CPU_SIMD_H

#if defined(BSI_SIMDE)
#define SIMDE_ENABLE_NATIVE_ALIASES
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#if defined(BSI_SIMDE_NEON)
#include <simde/arm/neon.h>
#else
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#endif
#pragma GCC diagnostic pop
#elif defined(__aarch64__) || defined(__ARM_NEON)
#include <arm_neon.h>
#else
#include <immintrin.h>
#endif

#endif
