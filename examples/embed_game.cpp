// embed_game: libbonsai inside a game loop, from C++17.
//
//   c++ -std=c++17 embed_game.cpp $(pkg-config --cflags --libs bonsai) -pthread -o embed_game
//   ./embed_game --frames 90 model.gguf "The dragon said"
//
// A game cannot stop drawing frames while a model thinks. Here generation runs on a worker thread;
// each token's text is handed to the frame loop through a small mutex-protected queue, which the
// frame loop polls without ever waiting (try_lock). The frame loop cancels the generation with
// bonsai_session_cancel() when its frame budget is spent or on Ctrl-C, and the worker is joined
// before anything is freed.
//
// The first part is a thin RAII wrapper over the C API (unique ownership, exceptions carrying
// bonsai_last_error()) that can be copied into a project as it is.
#include <bonsai/bonsai.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace bonsai
{

// A failed call: the status and the library's message, read on the thread that failed
// (bonsai_last_error() is per thread).
class Error : public std::runtime_error
{
  public:
    Error(bonsai_status status, const std::string &what)
        : std::runtime_error(what + ": " + bonsai_last_error()), status_(status)
    {
    }
    bonsai_status status() const noexcept
    {
        return status_;
    }

  private:
    bonsai_status status_;
};

inline void check(bonsai_status status, const std::string &what)
{
    if (status != BONSAI_OK) throw Error(status, what);
}

// unique_ptr deleters for the C handles.
struct ModelFree {
    void operator()(bonsai_model *m) const noexcept
    {
        bonsai_model_free(m);
    }
};
struct SessionFree {
    void operator()(bonsai_session *s) const noexcept
    {
        bonsai_session_free(s);
    }
};
struct SamplerFree {
    void operator()(bonsai_sampler *s) const noexcept
    {
        bonsai_sampler_free(s);
    }
};

// A loaded model: movable, not copyable. It may be destroyed before its sessions, which keep it
// alive inside the library.
class Model
{
  public:
    explicit Model(const std::string &path)
    {
        bonsai_model *m = nullptr;
        check(bonsai_model_load(path.c_str(), nullptr, &m), "cannot load " + path);
        ptr_.reset(m);
    }
    bonsai_model *get() const noexcept
    {
        return ptr_.get();
    }
    std::string name() const
    {
        return bonsai_model_name(get());
    }

  private:
    std::unique_ptr<bonsai_model, ModelFree> ptr_;
};

// The usual sampler chain (top-k, top-p, min-p, temperature, seeded draw; greedy at 0).
class Sampler
{
  public:
    explicit Sampler(float temperature, uint64_t seed = 0)
    {
        bonsai_sampler_params params;
        bonsai_sampler_params_init(&params);
        params.temperature = temperature;
        params.seed = seed;
        bonsai_sampler *s = nullptr;
        check(bonsai_sampler_create_default(&params, &s), "cannot create the sampler");
        ptr_.reset(s);
    }
    bonsai_sampler *get() const noexcept
    {
        return ptr_.get();
    }

  private:
    std::unique_ptr<bonsai_sampler, SamplerFree> ptr_;
};

// A session (backend and KV cache). Used by one thread at a time, except cancel().
class Session
{
  public:
    // Receives each token's text (possibly empty); returns false to stop.
    using PieceFn = std::function<bool(std::string_view)>;

    explicit Session(Model &model, uint32_t n_ctx = 0)
    {
        bonsai_session_params params;
        bonsai_session_params_init(&params);
        params.n_ctx = n_ctx;
        bonsai_session *s = nullptr;
        check(bonsai_session_create(model.get(), &params, &s), "cannot create a session");
        ptr_.reset(s);
    }

    // Generates a continuation of `prompt`. An exception thrown by on_piece stops the generation
    // and is rethrown here: it never unwinds through the library's C frames.
    bonsai_generate_stats generate(const std::string &prompt, uint32_t max_tokens, Sampler *sampler,
                                   const PieceFn &on_piece)
    {
        Callback cb{&on_piece, nullptr};
        bonsai_generate_params params;
        bonsai_generate_params_init(&params);
        params.max_tokens = max_tokens;
        params.sampler = sampler ? sampler->get() : nullptr;
        params.on_token = &Session::on_token;
        params.user_data = &cb;
        bonsai_generate_stats stats{};
        stats.struct_size = sizeof stats;
        bonsai_status status = bonsai_generate(ptr_.get(), prompt.c_str(), &params, &stats);
        if (cb.error) std::rethrow_exception(cb.error);
        check(status, "generation failed");
        return stats;
    }

    // Asks a running generate() to stop after its current token. Safe from any thread.
    void cancel() noexcept
    {
        bonsai_session_cancel(ptr_.get());
    }

    std::string backend() const
    {
        return bonsai_session_backend(ptr_.get());
    }

  private:
    struct Callback {
        const PieceFn *fn;
        std::exception_ptr error;
    };

    static bool on_token(int32_t, const char *text, size_t len, float, void *user_data) noexcept
    {
        auto *cb = static_cast<Callback *>(user_data);
        try {
            return (*cb->fn)(std::string_view(text, len));
        } catch (...) {
            cb->error = std::current_exception();
            return false;
        }
    }

    std::unique_ptr<bonsai_session, SessionFree> ptr_;
};

} // namespace bonsai

static volatile std::sig_atomic_t g_interrupted = 0; // Ctrl-C: the "player" asks to stop

extern "C" {
static void on_sigint(int)
{
    g_interrupted = 1;
}
}

namespace
{

const char *stop_reason_name(bonsai_stop_reason r)
{
    switch (r) {
    case BONSAI_STOP_EOG: return "end of text";
    case BONSAI_STOP_MAX_TOKENS: return "token limit";
    case BONSAI_STOP_STRING: return "stop string";
    case BONSAI_STOP_CANCELLED: return "cancelled";
    case BONSAI_STOP_CONTEXT_FULL: return "context full";
    case BONSAI_STOP_CONSTRAINT: return "constraint done";
    default: return "none";
    }
}

// What the worker hands to the frame loop. The worker holds the lock only to append; the frame
// loop only try-locks, so a frame never waits, not even for the worker.
class Mailbox
{
  public:
    void push(std::string_view piece)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        pieces_.emplace_back(piece);
    }
    void finish(const bonsai_generate_stats &stats, std::exception_ptr error)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stats_ = stats;
        error_ = std::move(error);
        finished_ = true;
    }
    // Moves what has arrived into `pieces`; false when the worker holds the lock right now (the
    // pieces then wait for the next frame). `finished` tells whether the worker is done.
    bool poll(std::vector<std::string> &pieces, bool &finished)
    {
        std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
        if (!lock.owns_lock()) return false;
        pieces.swap(pieces_);
        pieces_.clear();
        finished = finished_;
        return true;
    }
    // After the worker was joined.
    const bonsai_generate_stats &stats() const
    {
        return stats_;
    }
    std::exception_ptr error() const
    {
        return error_;
    }

  private:
    std::mutex mutex_;
    std::vector<std::string> pieces_;
    bool finished_ = false;
    bonsai_generate_stats stats_{};
    std::exception_ptr error_;
};

// Text on one line, for the per-frame log.
std::string one_line(const std::string &s)
{
    std::string out;
    for (char c : s) out += c == '\n' ? ' ' : c;
    return out;
}

struct Options {
    const char *model = nullptr;
    std::string prompt = "Once upon a time";
    long frames = 120; // frame budget of the generation (0: none)
    long fps = 60;
    long max_tokens = 0; // 0: until the model ends or the context is full
    float temperature = 0.0f;
};

bool parse(int argc, char **argv, Options &o)
{
    int positional = 0;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : nullptr;
        char *end = nullptr;
        if (a == "--frames" && value) {
            o.frames = std::strtol(value, &end, 10);
            if (o.frames < 0) return false;
        } else if (a == "--fps" && value) {
            o.fps = std::strtol(value, &end, 10);
            if (o.fps < 1 || o.fps > 1000) return false;
        } else if (a == "-n" && value) {
            o.max_tokens = std::strtol(value, &end, 10);
            if (o.max_tokens < 0 || o.max_tokens > 1L << 24) return false;
        } else if (a == "--temp" && value) {
            o.temperature = std::strtof(value, &end);
            if (!(o.temperature >= 0.0f)) return false;
        } else if (a[0] == '-' || positional == 2) {
            return false;
        } else if (positional++ == 0) {
            o.model = argv[i];
        } else {
            o.prompt = argv[i];
        }
        if (end) {
            if (end == value || *end) return false;
            i++;
        }
    }
    return o.model != nullptr;
}

int run(const Options &o)
{
    bonsai::Model model(o.model);
    bonsai::Session session(model);
    bonsai::Sampler sampler(o.temperature);
    std::printf("model %s on %s; %ld frames per second, budget %ld frames\n",
                model.name().empty() ? o.model : model.name().c_str(), session.backend().c_str(),
                o.fps, o.frames);

    Mailbox mailbox;
    // bonsai_session_cancel() stops a generation that is running; a request made before the
    // worker has entered bonsai_generate() is not kept. This flag, checked for every token,
    // covers that moment.
    std::atomic<bool> stop{false};
    std::thread worker([&] {
        bonsai_generate_stats stats{};
        std::exception_ptr error;
        try {
            stats = session.generate(o.prompt, static_cast<uint32_t>(o.max_tokens), &sampler,
                                     [&](std::string_view piece) {
                                         mailbox.push(piece);
                                         return !stop.load();
                                     });
        } catch (...) {
            error = std::current_exception(); // rethrown on the main thread after join()
        }
        mailbox.finish(stats, error);
    });
    // If anything below throws, the worker is still stopped and joined before the session and the
    // mailbox it uses go away (a joinable std::thread would otherwise terminate the program).
    struct StopAndJoin {
        std::thread &worker;
        std::atomic<bool> &stop;
        bonsai::Session &session;
        ~StopAndJoin()
        {
            if (!worker.joinable()) return;
            stop = true;
            session.cancel();
            worker.join();
        }
    } stop_and_join{worker, stop, session};

    using clock = std::chrono::steady_clock;
    const auto frame_time = std::chrono::microseconds(1000000 / o.fps);
    const auto start = clock::now();
    auto next_frame = start;
    auto slowest = clock::duration::zero();
    std::string text = o.prompt;
    std::vector<std::string> pieces;
    long frame = 0, frames_with_text = 0, cancelled_at = 0;
    size_t n_tokens = 0;
    bool finished = false;
    while (!finished) {
        frame++;
        const auto frame_start = clock::now();
        // Input: the frame budget or the player can stop the model.
        if (!cancelled_at && (g_interrupted || (o.frames && frame > o.frames))) {
            stop = true;
            session.cancel();
            cancelled_at = frame;
            std::printf("[frame %4ld] %s: cancelling\n", frame,
                        g_interrupted ? "interrupted" : "budget spent");
        }
        // Update: take what the model wrote since the last frame, without waiting for it.
        if (mailbox.poll(pieces, finished) && !pieces.empty()) {
            std::string fresh;
            for (const std::string &p : pieces) fresh += p;
            n_tokens += pieces.size();
            text += fresh;
            frames_with_text++;
            // Render: here, a log line; in a game, a speech bubble.
            std::printf("[frame %4ld] +%zu tokens (%zu in all): %s\n", frame, pieces.size(),
                        n_tokens, one_line(fresh).c_str());
        } else if (frame % o.fps == 0) {
            std::printf("[frame %4ld] waiting for the model\n", frame);
        }
        std::fflush(stdout);
        slowest = std::max(slowest, clock::now() - frame_start);
        if (finished) break;
        next_frame += frame_time;
        std::this_thread::sleep_until(next_frame);
    }
    worker.join();
    if (mailbox.error()) std::rethrow_exception(mailbox.error());

    const bonsai_generate_stats &stats = mailbox.stats();
    double seconds = std::chrono::duration<double>(clock::now() - start).count();
    double slowest_ms = std::chrono::duration<double, std::milli>(slowest).count();
    std::printf("--- text ---\n%s\n---\n", text.c_str());
    std::printf("finished at frame %ld after %.2f s: %s, %u tokens (%.1f tok/s), text arrived in "
                "%ld frames, slowest frame %.2f ms\n",
                frame, seconds, stop_reason_name(stats.stop_reason), stats.n_generated,
                stats.generate_tps, frames_with_text, slowest_ms);
    if (cancelled_at) std::printf("cancelled at frame %ld\n", cancelled_at);
    return 0;
}

} // namespace

int main(int argc, char **argv)
{
    Options options;
    if (!parse(argc, argv, options)) {
        std::fprintf(stderr,
                     "usage: %s [--frames N] [--fps F] [-n MAX_TOKENS] [--temp T] MODEL.gguf "
                     "[PROMPT]\n"
                     "  --frames N  cancel the generation after N frames (default 120; 0: never)\n"
                     "  --fps F     frames per second (default 60)\n"
                     "  -n N        tokens at most (default 0: until the end or a full context)\n"
                     "  --temp T    temperature (default 0: greedy)\n"
                     "Ctrl-C cancels the generation; the program then exits cleanly.\n",
                     argv[0]);
        return 2;
    }
    std::signal(SIGINT, on_sigint);
    try {
        return run(options);
    } catch (const bonsai::Error &e) {
        std::fprintf(stderr, "error: %s (%s)\n", e.what(), bonsai_status_string(e.status()));
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
    }
    return 1;
}
