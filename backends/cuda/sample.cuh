/*
 * Sampling one row of logits on the GPU, as lib/sampler.c's built-in chain [top-k] [top-p]
 * [min-p] [temperature] dist (or greedy) does it on the host, so that only the token id (and its
 * log-probability) crosses to the host. One block of SAMPLE_THREADS threads per row:
 *
 *   1. one pass over the row: its maximum, the first index holding it, and the sum of
 *      exp(logit - max) (the log-probability's denominator);
 *   2. greedy: done. Otherwise the SAMPLE_CAND best logits (or top-k of them) are found by a radix
 *      select on the logits' order-preserving keys (4 passes of 8 bits), gathered and sorted
 *      (bitonic, highest logit first, then lowest id);
 *   3. thread 0 runs the stages over that list exactly as the host would, and reports -1
 *      ("sample on the host") where the host's result could depend on tokens outside the list
 *      or on an order the list does not have.
 */
#ifndef BONSAI_CUDA_SAMPLE_CUH
#define BONSAI_CUDA_SAMPLE_CUH

#include "kernels.cuh"

#include <float.h>

namespace bsi_cuda {

constexpr int SAMPLE_THREADS = 1024;
constexpr int SAMPLE_CAND = 1024; /* candidates kept on the device (one per thread) */

struct sample_params {
    int greedy;       /* the chain ends in greedy, or temperature <= 0 */
    int top_k;        /* 0: no top-k stage */
    int has_top_p, top_p_keep;
    float top_p;
    int has_min_p, min_p_keep;
    float min_p_log;  /* log(min_p) */
    float temp;       /* > 0 (1: no change) */
    double u;         /* uniform in [0, 1): the draw of the final dist stage */
};

struct sample_out {
    int32_t token; /* -1: the host must sample this row */
    float logprob;
};

/* Float to unsigned with the same order (NaN as -inf). */
__device__ __forceinline__ uint32_t order_key(float x)
{
    if (x != x) x = -INFINITY;
    if (x == 0.0f) x = 0.0f; /* -0 as +0, as the host orders them */
    uint32_t u = __float_as_uint(x);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

__device__ __forceinline__ float clean(float x)
{
    return x != x ? -INFINITY : x;
}

/* Running (max, first index of it, sum of exp(x - max)) merged with another. */
__device__ __forceinline__ void msa_merge(float &m, int &a, float &s, float m2, int a2, float s2)
{
    if (m2 > m) {
        s = (m > -INFINITY ? s * expf(m - m2) : 0.0f) + s2;
        m = m2;
        a = a2;
    } else {
        if (m2 > -INFINITY) s += s2 * expf(m2 - m);
        if (m2 == m && a2 < a) a = a2;
    }
}

/* Does candidate (la, ia) come before (lb, ib): higher logit, then lower id. */
__device__ __forceinline__ bool cand_before(float la, int ia, float lb, int ib)
{
    return la > lb || (la == lb && ia < ib);
}

/* Sorts the block's SAMPLE_CAND (logit, id) pairs: by `before` order, or by id when by_id. */
__device__ void bitonic(float *l, int *id, bool by_id)
{
    int t = threadIdx.x;
    for (int k = 2; k <= SAMPLE_CAND; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            int o = t ^ j;
            if (o > t) {
                bool first = (t & k) == 0;
                bool swap = by_id ? (first ? id[o] < id[t] : id[t] < id[o])
                                  : (first ? cand_before(l[o], id[o], l[t], id[t])
                                           : cand_before(l[t], id[t], l[o], id[o]));
                if (swap) {
                    float tl = l[t];
                    l[t] = l[o];
                    l[o] = tl;
                    int ti = id[t];
                    id[t] = id[o];
                    id[o] = ti;
                }
            }
            __syncthreads();
        }
    }
}

/* The kernel's form of lib/backend.h's bsi_sample_params (a template, so that this header needs
 * no C header). */
template <class P> sample_params make_sample_params(const P &p)
{
    sample_params sp;
    sp.greedy = p.greedy;
    sp.top_k = p.top_k;
    sp.has_top_p = p.has_top_p;
    sp.top_p = p.top_p;
    sp.top_p_keep = p.top_p_keep > INT32_MAX ? INT32_MAX : (int)p.top_p_keep;
    sp.has_min_p = p.has_min_p;
    sp.min_p_log = p.min_p_log;
    sp.min_p_keep = p.min_p_keep > INT32_MAX ? INT32_MAX : (int)p.min_p_keep;
    sp.temp = p.temp;
    sp.u = p.u;
    return sp;
}

/* One row to sample: its logits (device memory) and its chain. */
struct sample_job {
    const float *logits;
    sample_params sp;
};

/* Samples row jobs[b] into outs[b], a block b per row (several sessions' rows in one launch). */
__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(const sample_job *__restrict__ jobs, int n_vocab, sample_out *__restrict__ outs)
{
    const float *__restrict__ logits = jobs[blockIdx.x].logits;
    const sample_params sp = jobs[blockIdx.x].sp;
    sample_out *out = outs + blockIdx.x;
    __shared__ float cl[SAMPLE_CAND];
    __shared__ int cid[SAMPLE_CAND];
    __shared__ float pr[SAMPLE_CAND];
    __shared__ float wm[32], ws[32];
    __shared__ int wa[32];
    __shared__ unsigned hist[256];
    __shared__ uint32_t s_prefix, s_mask;
    __shared__ int s_remaining, n_gt, n_eq;
    __shared__ float s_max, s_sum;
    __shared__ int s_arg;
    const int tid = threadIdx.x, lane = tid % WARP, warp = tid / WARP;

    /* 1. max, its first index, sum of exp */
    float m = -INFINITY, s = 0.0f;
    int a = INT_MAX;
    for (int i = tid; i < n_vocab; i += SAMPLE_THREADS) msa_merge(m, a, s, clean(logits[i]), i, 1.0f);
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        int a2 = __shfl_xor_sync(0xffffffffu, a, o);
        msa_merge(m, a, s, m2, a2, s2);
    }
    if (lane == 0) {
        wm[warp] = m;
        wa[warp] = a;
        ws[warp] = s;
    }
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < SAMPLE_THREADS / WARP; w++) msa_merge(m, a, s, wm[w], wa[w], ws[w]);
        s_max = m;
        s_arg = a;
        s_sum = s;
    }
    __syncthreads();
    const float mx = s_max;
    if (!(mx > -INFINITY) || mx == INFINITY) { /* nothing to choose, or +inf logits: the host */
        if (tid == 0) out->token = -1;
        return;
    }
    const float log_z = logf(s_sum);
    if (sp.greedy) {
        if (tid == 0) {
            out->token = s_arg;
            out->logprob = -log_z;
        }
        return;
    }

    /* 2. the best C logits: radix select of the C-th largest key, then gather and sort */
    if (sp.top_k > SAMPLE_CAND) {
        if (tid == 0) out->token = -1;
        return;
    }
    const bool top_k_cuts = sp.top_k > 0 && sp.top_k < n_vocab;
    const int C = min(n_vocab, sp.top_k > 0 ? sp.top_k : SAMPLE_CAND);
    if (tid == 0) {
        s_prefix = 0;
        s_mask = 0;
        s_remaining = C;
        n_gt = n_eq = 0;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += SAMPLE_THREADS) hist[i] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix, mask = s_mask;
        for (int i = tid; i < n_vocab; i += SAMPLE_THREADS) {
            uint32_t k = order_key(logits[i]);
            if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            int need = s_remaining, above = 0;
            for (int b = 255; b >= 0; b--) {
                if (above + (int)hist[b] >= need) {
                    s_remaining = need - above;
                    s_prefix = prefix | (uint32_t)b << shift;
                    s_mask = mask | 255u << shift;
                    break;
                }
                above += (int)hist[b];
            }
        }
        __syncthreads();
    }
    const uint32_t T = s_prefix;
    const int take_eq = s_remaining, n_above = C - take_eq;
    cl[tid] = -INFINITY;
    cid[tid] = INT_MAX;
    __syncthreads();
    for (int i = tid; i < n_vocab; i += SAMPLE_THREADS) {
        float l = clean(logits[i]);
        uint32_t k = order_key(l);
        if (k > T) {
            int j = atomicAdd(&n_gt, 1);
            cl[j] = l;
            cid[j] = i;
        } else if (k == T) {
            int j = atomicAdd(&n_eq, 1);
            if (j < take_eq) {
                cl[n_above + j] = l;
                cid[n_above + j] = i;
            }
        }
    }
    __syncthreads();
    /* more tokens tie at the cut than fit: the host keeps the lowest ids of them, which this
     * gather did not choose (ties at -inf have no probability and do not matter) */
    if (n_eq > take_eq && T != order_key(-INFINITY)) {
        if (tid == 0) out->token = -1;
        return;
    }
    bitonic(cl, cid, false);

    /* 3. the stages, as lib/sampler.c runs them on this (sorted) list */
    __shared__ int s_n, s_sorted, s_ok;
    if (tid == 0) {
        s_n = C;
        s_sorted = top_k_cuts; /* else the host's list is every token in id order */
        s_ok = 1;
    }
    __syncthreads();
    if (sp.has_top_p) {
        /* probabilities over the current list: the C candidates after a top-k, else the whole
         * vocabulary (whose sum pass 1 gave) */
        float ref = top_k_cuts ? cl[0] : mx;
        pr[tid] = tid < C && cl[tid] > -INFINITY ? expf(cl[tid] - ref) : 0.0f;
        __syncthreads();
        if (tid == 0) {
            double sum = 0;
            if (top_k_cuts)
                for (int i = 0; i < C; i++) sum += pr[i];
            else
                sum = s_sum;
            float inv = (float)(1.0 / sum);
            double cum = 0;
            int cut = -1;
            for (int i = 0; i < C; i++) {
                cum += pr[i] * inv;
                if (cum >= sp.top_p && i + 1 >= sp.top_p_keep) {
                    cut = i + 1;
                    break;
                }
            }
            if (cut < 0) {
                if (!top_k_cuts) s_ok = 0; /* the cut lies beyond the list */
            } else if (!top_k_cuts && cut > max(256, sp.top_p_keep)) {
                s_ok = 0; /* the host leaves that part of its list unordered */
            } else {
                s_n = cut;
                s_sorted = 1;
            }
        }
        __syncthreads();
    }
    if (tid == 0 && s_ok && sp.has_min_p) {
        float thr = cl[0] + sp.min_p_log;
        int n = s_n, kept = 0;
        while (kept < n && cl[kept] >= thr) kept++;
        if (!s_sorted && n == C && C < n_vocab && cl[C - 1] >= thr)
            s_ok = 0; /* tokens outside the list may pass too */
        else if (kept >= sp.min_p_keep)
            s_n = kept;
        else if (!s_sorted && C < n_vocab && sp.min_p_keep > C)
            s_ok = 0; /* the host keeps more than the list holds */
        else
            s_n = min(sp.min_p_keep, n), s_sorted = 1;
    }
    __syncthreads();
    if (!s_ok || (!s_sorted && !sp.has_min_p)) { /* the whole vocabulary is still in play */
        if (tid == 0) out->token = -1;
        return;
    }
    const int n = s_n;
    if (!s_sorted) { /* the host walks its list in id order */
        if (tid >= n) {
            cl[tid] = -INFINITY;
            cid[tid] = INT_MAX;
        }
        __syncthreads();
        bitonic(cl, cid, true);
    }
    /* temperature, then dist: softmax over the list, walked in its order */
    float lt = tid < n ? (sp.temp != 1.0f ? cl[tid] / sp.temp : cl[tid]) : -INFINITY;
    cl[tid] = lt;
    __syncthreads();
    float lm = -INFINITY;
    for (int i = 0; i < n; i++) lm = fmaxf(lm, cl[i]); /* every thread: n <= 1024 reads */
    if (lm == INFINITY) { /* a tiny temperature overflowed: the host shares the mass */
        if (tid == 0) out->token = -1;
        return;
    }
    pr[tid] = tid < n && lt > -INFINITY ? expf(lt - lm) : 0.0f;
    __syncthreads();
    if (tid == 0) {
        double sum = 0;
        for (int i = 0; i < n; i++) sum += pr[i];
        float inv = (float)(1.0 / sum);
        double total = 0;
        for (int i = 0; i < n; i++) total += pr[i] * inv;
        double r = sp.u * total, cum = 0;
        int pick = -1;
        for (int i = 0; i < n; i++) {
            float p = pr[i] * inv;
            if (p <= 0) continue;
            pick = i;
            cum += p;
            if (cum > r) break;
        }
        if (pick < 0) {
            out->token = -1;
        } else {
            int t = cid[pick];
            out->token = t;
            out->logprob = clean(logits[t]) - mx - log_z;
        }
    }
}

} // namespace bsi_cuda

#endif
