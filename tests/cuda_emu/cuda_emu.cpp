/* The CPU side of tests/cuda_emu/cuda_emu.h: fibers, barriers and the launch. */
#include "cuda_emu.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

/* ThreadSanitizer (CUDA_EMU_TSAN: the kernels' code instrumented, this file not): each CUDA
 * thread is a fiber of its own (__tsan_create_fiber), the switches between them order nothing,
 * and within a block the only orderings are the ones a GPU gives: a barrier (each thread's
 * accesses before it happen before every thread's after it) and the atomics. So TSan reports any
 * two accesses of two threads of a block, one of them a write, with no barrier between them: a
 * data race on a GPU, whatever order the emulator ran them in. A block's start happens after
 * what ran before it (the host's writes, the blocks before) and its end before what runs after:
 * blocks run one after another and share the addresses of __shared__ variables, so races
 * between blocks are not TSan's to find here (CUDA_EMU_REVERSE_BLOCKS is the check for those).
 * This file's own accesses (the scheduler, the barriers' counts, threadIdx) are not seen; those
 * it makes for a thread (cp.async's copies, wgmma's reads of B) are told to TSan as that
 * thread's. */
#ifdef CUDA_EMU_TSAN
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_read_range(void *addr, unsigned long size);
extern "C" void __tsan_write_range(void *addr, unsigned long size);
extern "C" void __tsan_ignore_thread_begin(void);
extern "C" void __tsan_ignore_thread_end(void);
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace cuda_emu
{

block_state *g_state;
bool g_reverse_blocks;
std::vector<span> *g_prefetches;

namespace
{

constexpr size_t STACK = 512 * 1024; /* per CUDA thread; the sanitizers' frames are large */
/* Stacks are STACK apart, so their tops would all fall in the same cache sets and every switch
 * would miss: fiber t's stack starts COLOR * (t % COLORS) bytes lower instead (up to 128 KB). */
constexpr size_t COLOR = 1040, COLORS = 126;

/* A fiber's saved context. On x86-64 a stack pointer: cuda_emu_switch pushes the callee-saved
 * registers, swaps stacks and pops them (swapcontext would also save the signal mask, a system
 * call per switch, most of the emulator's time). Elsewhere ucontext. */
#if defined(__x86_64__)
struct context {
    void *sp;
};
extern "C" void cuda_emu_switch(void **save_sp, void *load_sp);
asm(".text\n"
    ".p2align 4\n"
    ".local cuda_emu_switch\n"
    ".type cuda_emu_switch, @function\n"
    "cuda_emu_switch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size cuda_emu_switch, .-cuda_emu_switch\n");
void switch_to(context *save, context *load)
{
    cuda_emu_switch(&save->sp, load->sp);
}
#else
struct context {
    ucontext_t uc;
};
void switch_to(context *save, context *load)
{
    swapcontext(&save->uc, &load->uc);
}
#endif

struct fiber {
    context ctx;
    unsigned char *stack;
    unsigned index;
    bool done;
};

/* The running block (of the thread running a launch: they take turns): its fibers, how many
 * have not ended, the one running, the waits in a row that found their barrier closed (the
 * deadlock check), the scheduler's context and (AddressSanitizer) stack. */
fiber *t_fibers;
unsigned t_n, t_live, t_idle;
fiber *t_cur;
context t_sched;
const std::function<void()> *t_body;
#ifdef CUDA_EMU_TSAN
std::vector<void *> tsan_fibers; /* per thread index, made once like the stacks */
void *t_tsan_main;               /* the thread that runs the launch */
char tsan_start, tsan_end;       /* the host's writes before a block; a block's writes */
#endif
#ifdef EMU_ASAN
const void *t_main_bottom;
size_t t_main_size;
bool t_from_sched; /* the switch into a new fiber came from the scheduler */
#endif

/* Saves the running context (the scheduler's or a fiber's) into `save` and runs fiber `to`, or
 * the scheduler (to == nullptr); `dying`: the context saved has ended and is never resumed. */
void hand_over(context *save, fiber *to, bool dying)
{
    t_cur = to;
    if (to) threadIdx = dim3(to->index);
#ifdef CUDA_EMU_TSAN
    __tsan_switch_to_fiber(to ? tsan_fibers[to->index] : t_tsan_main,
                           __tsan_switch_to_fiber_no_sync);
#endif
#ifdef EMU_ASAN
    void *fake = nullptr;
    t_from_sched = save == &t_sched;
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, to ? to->stack : t_main_bottom,
                                   to ? STACK : t_main_size);
#else
    (void)dying;
#endif
    switch_to(save, to ? &to->ctx : &t_sched);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

/* From the running fiber to fiber `to`, or back to the scheduler (to == nullptr). Fibers hand
 * over to each other directly, so a barrier costs one switch a thread. */
void switch_from_running(fiber *to, bool dying)
{
    hand_over(&t_cur->ctx, to, dying);
}

/* The order in which the block's fibers take turns: t_order[k] is the k-th fiber, t_turn[f] the
 * turn of fiber f (see schedule()). */
std::vector<unsigned> t_order, t_turn;

/* The fiber after the running one, in turn, that has not ended. */
fiber *next_fiber()
{
    unsigned k = t_turn[t_cur->index];
    do k = (k + 1) % t_n;
    while (t_fibers[t_order[k]].done);
    return &t_fibers[t_order[k]];
}

/* cp.async copies issued and not yet landed, per thread of the running block, in the order of
 * issue; `group` is the index of the thread's group that holds the copy, OPEN until committed */
struct async_copy {
    unsigned char *dst;
    unsigned char data[16];
    unsigned long group;
};
constexpr unsigned long OPEN = ~0ul;
std::vector<std::vector<async_copy>> t_copies;
std::vector<unsigned long> t_committed; /* per thread: groups committed so far */

/* thread t's copies that are committed in a group before `before`, or all of them if `all` */
void land_copies(unsigned t, unsigned long before, bool all)
{
    std::vector<async_copy> &q = t_copies[t];
    size_t k = 0;
    for (; k < q.size() && (all || (q[k].group != OPEN && q[k].group < before)); k++) {
#ifdef CUDA_EMU_TSAN
        __tsan_write_range(q[k].dst, 16);
#endif
        memcpy(q[k].dst, q[k].data, 16);
    }
    q.erase(q.begin(), q.begin() + (ptrdiff_t)k);
}

/* A fiber's first and only frame: it never returns (no fiber hands over to one that ended). */
void fiber_main()
{
#ifdef EMU_ASAN
    if (t_from_sched)
        __sanitizer_finish_switch_fiber(nullptr, &t_main_bottom, &t_main_size);
    else
        __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
#ifdef CUDA_EMU_TSAN
    __tsan_acquire(&tsan_start);
#endif
    (*t_body)();
    land_copies(t_cur->index, 0, true); /* a thread's copies land even if it never waited */
#ifdef CUDA_EMU_TSAN
    __tsan_release(&tsan_end);
#endif
    t_cur->done = true;
    t_idle = 0;
    switch_from_running(--t_live ? next_fiber() : nullptr, true);
    abort();
}

/* f ready to run the body from the start */
__attribute__((noinline)) void prepare(fiber *f, unsigned char *stack, unsigned t)
{
    f->stack = stack;
    f->index = t;
    f->done = false;
    size_t size = STACK - COLOR * (t % COLORS);
#ifdef EMU_ASAN
    /* the frames of the fiber that last ran here never returned: their redzones are still
     * poisoned */
    __asan_unpoison_memory_region(stack, STACK);
#endif
#if defined(__x86_64__)
    /* the first switch pops six zeroed registers and "returns" into fiber_main with the stack
     * as after a call (rsp + 8 aligned to 16) */
    void **top = (void **)(stack + size);
    top[-1] = nullptr;             /* fiber_main's return address: never used */
    top[-2] = (void *)&fiber_main; /* cuda_emu_switch's ret */
    for (int i = 3; i <= 8; i++) top[-i] = nullptr;
    f->ctx.sp = &top[-8];
#else
    /* (apart from run(): getcontext returns twice) */
    getcontext(&f->ctx.uc);
    f->ctx.uc.uc_stack.ss_sp = stack;
    f->ctx.uc.uc_stack.ss_size = size;
    f->ctx.uc.uc_link = nullptr;
    makecontext(&f->ctx.uc, fiber_main, 0);
#endif
}

/* The scheduler runs a block: its first fiber in turn first; control comes back when all have
 * ended. */
void run_block(fiber *fibers, unsigned n)
{
    t_fibers = fibers;
    t_n = t_live = n;
    t_idle = 0;
#ifdef CUDA_EMU_TSAN
    t_tsan_main = __tsan_get_current_fiber();
    __tsan_release(&tsan_start);
#endif
    hand_over(&t_sched, &fibers[t_order[0]], false);
#ifdef CUDA_EMU_TSAN
    __tsan_acquire(&tsan_end);
#endif
}

/* The order of the threads' turns (set_schedule, CUDA_EMU_SCHEDULE); read on the first launch. */
struct schedule_cfg {
    schedule_order how = schedule_order::forward;
    uint64_t seed = 1;
    bool set = false;
} g_schedule;

const schedule_cfg &schedule()
{
    if (g_schedule.set) return g_schedule;
    g_schedule.set = true;
    const char *e = getenv("CUDA_EMU_SCHEDULE");
    if (!e || !*e || !strcmp(e, "forward")) return g_schedule;
    if (!strcmp(e, "reverse")) {
        g_schedule.how = schedule_order::reverse;
    } else if (!strncmp(e, "shuffle", 7) && (!e[7] || e[7] == ':')) {
        g_schedule.how = schedule_order::shuffle;
        if (e[7]) g_schedule.seed = strtoull(e + 8, nullptr, 10);
    } else {
        fprintf(stderr,
                "cuda_emu: CUDA_EMU_SCHEDULE=%s: want forward, reverse, shuffle or "
                "shuffle:SEED\n",
                e);
        abort();
    }
    return g_schedule;
}

/* t_order and t_turn for the n fibers of block `block` (its linear index): the shuffled order
 * depends on the seed, the block and n only, so a failure repeats in a run of that test alone */
void order_fibers(unsigned n, uint64_t block)
{
    t_order.resize(n);
    t_turn.resize(n);
    const schedule_cfg &c = schedule();
    for (unsigned i = 0; i < n; i++) t_order[i] = c.how == schedule_order::reverse ? n - 1 - i : i;
    if (c.how == schedule_order::shuffle) {
        /* Fisher-Yates driven by splitmix64 of (seed, block, n) */
        uint64_t x = (c.seed * 0x9E3779B97F4A7C15ull + block) * 0xD1B54A32D192ED03ull + n;
        for (unsigned i = n - 1; i > 0; i--) {
            uint64_t z = (x += 0x9E3779B97F4A7C15ull);
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            z ^= z >> 31;
            std::swap(t_order[i], t_order[z % (i + 1)]);
        }
    }
    for (unsigned i = 0; i < n; i++) t_turn[t_order[i]] = i;
}

/* launches from several threads take turns: __shared__ variables and dyn_smem() are global */
std::mutex launch_lock;

} // namespace

void set_schedule(schedule_order how, uint64_t seed)
{
    std::lock_guard<std::mutex> hold(launch_lock);
    g_schedule.how = how;
    g_schedule.seed = seed;
    g_schedule.set = true;
}

void reset_schedule()
{
    std::lock_guard<std::mutex> hold(launch_lock);
    g_schedule = schedule_cfg();
}

void barrier_wait(barrier *b)
{
    unsigned long gen = b->generation;
    t_idle = 0;
#ifdef CUDA_EMU_TSAN
    /* one synchronization object per generation's parity: a thread cannot arrive at generation
     * g + 2 before every thread has left g, so a late leaver of g acquires nothing done after g */
    char *sync = (char *)b + (gen & 1);
    __tsan_release(sync);
#endif
    if (++b->count == b->expected) {
        b->count = 0;
        b->generation++;
#ifdef CUDA_EMU_TSAN
        __tsan_acquire(sync);
#endif
        return;
    }
    /* the others run meanwhile; if every fiber that has not ended waits on a closed barrier
     * (more waits in a row than there are fibers), none ever will go on */
    while (b->generation == gen) {
        if (++t_idle > 2 * t_live) {
            fprintf(stderr,
                    "cuda_emu: block (%u, %u, %u) is stuck: a barrier that some of its "
                    "threads never reach\n",
                    blockIdx.x, blockIdx.y, blockIdx.z);
            abort();
        }
        switch_from_running(next_fiber(), false);
    }
#ifdef CUDA_EMU_TSAN
    __tsan_acquire(sync);
#endif
}

void cp_async_issue(void *smem, const void *gmem)
{
    async_copy c;
    c.dst = (unsigned char *)smem;
#ifdef CUDA_EMU_TSAN
    /* the copy may land at any time from now to the wait: a write now as well as then, so that
     * a copy into memory other threads still read without a barrier between is seen too */
    __tsan_read_range(const_cast<void *>(gmem), 16);
    __tsan_write_range(smem, 16);
#endif
    memcpy(c.data, gmem, 16);
    c.group = OPEN;
    t_copies[threadIdx.x].push_back(c);
}

void cp_async_commit_group()
{
    unsigned long g = t_committed[threadIdx.x]++;
    for (async_copy &c : t_copies[threadIdx.x])
        if (c.group == OPEN) c.group = g;
}

void cp_async_wait_groups(unsigned n)
{
    unsigned long c = t_committed[threadIdx.x];
    if (c > n) land_copies(threadIdx.x, c - n, false);
}

/* A wgmma descriptor of B without swizzling (mma.cuh): where in dynamic shared memory its core
 * matrix (8 columns x 8 k, 128 contiguous bytes) j along N and kh along K starts */
struct wg_desc {
    size_t start, lbo, sbo; /* bytes: the first core matrix; the next along K; along N */
    explicit wg_desc(unsigned long long d)
        : start((d & 0x3FFF) << 4), lbo((d >> 16 & 0x3FFF) << 4), sbo((d >> 32 & 0x3FFF) << 4)
    {
    }
    size_t core(size_t j, size_t kh) const
    {
        return start + j * sbo + kh * lbo;
    }
};

void wgmma_reads(unsigned long long desc, int n)
{
#ifdef CUDA_EMU_TSAN
    /* B's core matrices, read by the calling lane */
    const wg_desc b(desc);
    for (int j = 0; j < n / 8; j++)
        for (size_t kh = 0; kh < 2; kh++)
            if (b.core(j, kh) + 128 <= DYN_SMEM_BYTES)
                __tsan_read_range(dyn_smem() + b.core(j, kh), 128);
#else
    (void)desc, (void)n;
#endif
}

void wgmma_run()
{
    unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    block_state *st = g_state;
    __syncwarp(); /* every lane of the warp has issued its products (and stored its A) */
    unsigned char *smem = dyn_smem();
    for (unsigned op = 0; op < st->wg_pending[w][lane]; op++) {
        const block_state::wg_product &o = st->wg_op[w][lane][op];
        if (o.desc >> 46) { /* base offset, swizzling: not what mma.cuh makes */
            fprintf(stderr, "cuda_emu: wgmma descriptor %#llx has bits above 45\n", o.desc);
            abort();
        }
        if (memcmp(o.a, st->wg_a[op][w][lane], 4 * sizeof(uint32_t))) {
            fprintf(stderr, "cuda_emu: a wgmma's A registers changed before wgmma_wait0\n");
            abort();
        }
        const wg_desc b(o.desc);
        wgmma_reads(o.desc, o.n);
        for (int j = 0; j < o.n / 8; j++)
            for (unsigned e = 0; e < 4; e++) {
                unsigned row = g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + (e & 1);
                float sum = 0.0f;
                for (unsigned k = 0; k < 16; k++) {
                    /* A[row][k] from the lane (row % 8, k % 8 / 2) of this warp: register
                     * row / 8 + 2 (k / 8), half k % 2 */
                    uint32_t ra =
                        st->wg_a[op][w][(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)];
                    float av = bsi_fp16_to_fp32((uint16_t)(ra >> (16 * (k % 2))));
                    size_t at = b.core(col / 8, k / 8) + (col % 8) * 16 + (k % 8) * 2;
                    if (at + 2 > DYN_SMEM_BYTES) {
                        fprintf(stderr, "cuda_emu: wgmma reads past shared memory\n");
                        abort();
                    }
                    uint16_t bv;
                    memcpy(&bv, smem + at, 2);
                    sum += av * bsi_fp16_to_fp32(bv);
                }
                o.d[4 * j + e] += sum;
            }
    }
    st->wg_pending[w][lane] = 0;
    __syncwarp(); /* no lane issues new products (overwriting A) before all have read these */
}

void record_prefetch(const void *p, size_t n)
{
    if (!g_prefetches) return;
#ifdef CUDA_EMU_TSAN
    __tsan_ignore_thread_begin(); /* the list's memory (its allocations): the emulator's own */
#endif
    g_prefetches->push_back({p, n});
#ifdef CUDA_EMU_TSAN
    __tsan_ignore_thread_end();
#endif
}

unsigned char *dyn_smem()
{
    alignas(16) static unsigned char buf[DYN_SMEM_BYTES];
    return buf;
}

void run(dim3 grid, dim3 block, const std::function<void()> &body)
{
    unsigned n = block.x * block.y * block.z;
    if (block.y != 1 || block.z != 1 || n % 32 || n > 1024) {
        fprintf(stderr, "cuda_emu: blocks must be 1-D, a multiple of 32 threads, at most 1024\n");
        abort();
    }
    std::lock_guard<std::mutex> hold(launch_lock);
    /* the fibers' stacks: made once, kept (untouched pages cost nothing) */
    static std::vector<unsigned char *> stacks;
    while (stacks.size() < n) {
        void *p = mmap(nullptr, STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "cuda_emu: no memory for a fiber's stack\n");
            abort();
        }
        stacks.push_back((unsigned char *)p);
#ifdef CUDA_EMU_TSAN
        tsan_fibers.push_back(__tsan_create_fiber(0));
#endif
    }
    gridDim = grid;
    blockDim = block;
    block_state *st = new block_state;
    std::vector<fiber> fibers(n);
    t_body = &body;
    unsigned long total = (unsigned long)grid.x * grid.y * grid.z;
    /* CUDA_EMU_REVERSE_BLOCKS=1 turns the blocks' order around (as g_reverse_blocks does; both:
     * first to last again) */
    static const bool env_reverse =
        getenv("CUDA_EMU_REVERSE_BLOCKS") && !strcmp(getenv("CUDA_EMU_REVERSE_BLOCKS"), "1");
    bool reverse = g_reverse_blocks != env_reverse;
    for (unsigned long i = 0; i < total; i++) {
        unsigned long b = reverse ? total - 1 - i : i;
        blockIdx = dim3((unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                        (unsigned)(b / grid.x / grid.y));
        g_state = st;
        /* dynamic shared memory starts as garbage, as on a GPU, not as what the last block left */
        memset(dyn_smem(), 0xA5, DYN_SMEM_BYTES);
        st->block = {0, n, 0};
        for (unsigned w = 0; w < 32; w++) st->warp[w] = {0, 32, 0};
        memset(st->parity, 0, sizeof st->parity);
        memset(st->mma_parity, 0, sizeof st->mma_parity);
        memset(st->wg_pending, 0, sizeof st->wg_pending);
        t_copies.assign(n, {});
        t_committed.assign(n, 0);
        for (unsigned t = 0; t < n; t++) prepare(&fibers[t], stacks[t], t);
        order_fibers(n, b);
        run_block(fibers.data(), n);
    }
    delete st;
}

} // namespace cuda_emu

unsigned __cvta_generic_to_shared(const void *p)
{
    uintptr_t off = (uintptr_t)p - (uintptr_t)cuda_emu::dyn_smem();
    if (off >= cuda_emu::DYN_SMEM_BYTES) {
        fprintf(stderr, "cuda_emu: %p is not in dynamic shared memory\n", p);
        abort();
    }
    return (unsigned)off;
}
