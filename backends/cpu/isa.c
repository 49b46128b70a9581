#include "isa.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void)
{
    unsigned eax, edx;
    __asm__ __volatile__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

typedef struct x86_features {
    bool avx2, fma, f16c, avx512;
} x86_features;

static x86_features detect(void)
{
    x86_features f = {0};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    bool osxsave = c & (1u << 27), avx = c & (1u << 28);
    f.fma = c & (1u << 12);
    f.f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    unsigned long long xcr0 = xgetbv0();
    bool ymm_os = (xcr0 & 0x6) == 0x6;   /* SSE and AVX state */
    bool zmm_os = (xcr0 & 0xe6) == 0xe6; /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm_os && (b & (1u << 5)) && f.fma && f.f16c;
    bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    bool vnni = c & (1u << 11);
    f.avx512 = f.avx2 && zmm_os && avx512f && avx512bw && avx512vl && vnni;
    return f;
}
#endif

const char *bsi_isa_name(bsi_isa isa)
{
    static const char *const names[BSI_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};
    return (unsigned)isa < BSI_ISA_COUNT ? names[isa] : "?";
}

int bsi_isa_parse(const char *name)
{
    for (int i = 0; i < BSI_ISA_COUNT; i++)
        if (!strcmp(name, bsi_isa_name((bsi_isa)i))) return i;
    return -1;
}

bool bsi_isa_available(bsi_isa isa)
{
    switch (isa) {
    case BSI_ISA_SCALAR: return true;
#if defined(BSI_HAVE_AVX2)
    case BSI_ISA_AVX2: return detect().avx2;
#endif
#if defined(BSI_HAVE_AVX512)
    case BSI_ISA_AVX512: return detect().avx512;
#endif
#if defined(BSI_HAVE_NEON)
    case BSI_ISA_NEON: return true; /* Advanced SIMD is mandatory on AArch64 */
#endif
    default: return false;
    }
}

/* The choice is made once per process: weights packed for one variant are shared by every
 * session of a model, so a later change of BONSAI_CPU_ISA must not switch variants. */
static bsi_isa selected;
static bool selected_as_asked;
static pthread_once_t select_once = PTHREAD_ONCE_INIT;

static void select_isa(void)
{
    bsi_isa best = BSI_ISA_SCALAR;
    for (int i = BSI_ISA_COUNT - 1; i > 0; i--)
        if (bsi_isa_available((bsi_isa)i)) {
            best = (bsi_isa)i;
            break;
        }
    selected = best;
    selected_as_asked = true;
    const char *env = getenv("BONSAI_CPU_ISA");
    if (!env || !*env) return;
    int want = bsi_isa_parse(env);
    if (want >= 0 && bsi_isa_available((bsi_isa)want))
        selected = (bsi_isa)want;
    else
        selected_as_asked = false;
}

bsi_isa bsi_isa_select(bool *forced_ok)
{
    pthread_once(&select_once, select_isa);
    if (forced_ok) *forced_ok = selected_as_asked;
    return selected;
}
