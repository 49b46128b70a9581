/* The CPU side of tests/cuda_emu/cuda_emu.h: threads, barriers and the launch. */
#include "cuda_emu.h"

#include <cstdio>
#include <cstdlib>

namespace cuda_emu
{

thread_local dim3 tl_thread, tl_block;
thread_local block_state *tl_state;
dim3 g_grid, g_block;
bool g_reverse_blocks;

namespace
{

struct thread_arg {
    const std::function<void()> *body;
    block_state *state;
    dim3 thread, block;
};

void *trampoline(void *p)
{
    thread_arg *a = (thread_arg *)p;
    tl_thread = a->thread;
    tl_block = a->block;
    tl_state = a->state;
    (*a->body)();
    return nullptr;
}

} // namespace

unsigned char *dyn_smem()
{
    alignas(16) static unsigned char buf[256 * 1024];
    return buf;
}

void run(dim3 grid, dim3 block, const std::function<void()> &body)
{
    unsigned n = block.x * block.y * block.z;
    if (block.y != 1 || block.z != 1 || n % 32 || n > 1024) {
        fprintf(stderr, "cuda_emu: blocks must be 1-D, a multiple of 32 threads, at most 1024\n");
        abort();
    }
    g_grid = grid;
    g_block = block;
    block_state *st = new block_state;
    std::vector<pthread_t> threads(n);
    std::vector<thread_arg> args(n);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    unsigned long total = (unsigned long)grid.x * grid.y * grid.z;
    for (unsigned long i = 0; i < total; i++) {
        unsigned long b = g_reverse_blocks ? total - 1 - i : i;
        dim3 blk((unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                 (unsigned)(b / grid.x / grid.y));
        /* dynamic shared memory starts as garbage, as on a GPU, not as what the last block left */
        memset(dyn_smem(), 0xA5, 256 * 1024);
        pthread_barrier_init(&st->block, nullptr, n);
        for (unsigned w = 0; w < n / 32; w++) pthread_barrier_init(&st->warp[w], nullptr, 32);
        for (unsigned t = 0; t < n; t++) {
            args[t] = {&body, st, dim3(t), blk};
            if (pthread_create(&threads[t], &attr, trampoline, &args[t])) {
                fprintf(stderr, "cuda_emu: pthread_create failed\n");
                abort();
            }
        }
        for (unsigned t = 0; t < n; t++) pthread_join(threads[t], nullptr);
        pthread_barrier_destroy(&st->block);
        for (unsigned w = 0; w < n / 32; w++) pthread_barrier_destroy(&st->warp[w]);
    }
    pthread_attr_destroy(&attr);
    delete st;
}

} // namespace cuda_emu
