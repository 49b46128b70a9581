/* json_extract: pull structured fields out of free text as JSON that follows a JSON Schema.
 *
 *   cc json_extract.c $(pkg-config --cflags --libs bonsai) -o json_extract
 *   echo "Maria Lopez, 34, moved to Lisbon last spring." | ./json_extract model.gguf
 *   ./json_extract --schema invoice.schema.json model.gguf invoice.txt
 *
 * The model is asked, in its chat format, to fill the schema's fields from the text. The JSON
 * constraint (bonsai_sampler_add_json) masks every token that could not continue a document valid
 * for the schema and finishes the document within the token limit, so what is printed always
 * parses and always has the required fields, whatever the model would have liked to write.
 */
#include <bonsai/bonsai.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char default_schema[] = "{\"type\": \"object\",\n"
                                     " \"properties\": {\"name\": {\"type\": \"string\"},\n"
                                     "                \"age\": {\"type\": \"integer\"},\n"
                                     "                \"city\": {\"type\": \"string\"}},\n"
                                     " \"required\": [\"name\", \"age\", \"city\"]}";

/* Reads a whole stream into a NUL-terminated buffer; NULL when out of memory or on a read error. */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break; /* end of file or error */
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) free(buf);
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        return NULL;
    }
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "error: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *text = read_all(f, len);
    if (!text) fprintf(stderr, "error: cannot read %s\n", path);
    fclose(f);
    return text;
}

/* The generated text, gathered from the streaming callback. */
typedef struct output {
    char *data;
    size_t len, cap;
    bool oom;
} output;

static bool collect(int32_t token, const char *text, size_t len, float logprob, void *user_data)
{
    (void)token, (void)logprob;
    output *out = user_data;
    if (out->len + len + 1 > out->cap) {
        size_t cap = (out->len + len + 1) * 2;
        char *p = realloc(out->data, cap);
        if (!p) {
            out->oom = true;
            return false; /* stop generating */
        }
        out->data = p;
        out->cap = cap;
    }
    memcpy(out->data + out->len, text, len);
    out->len += len;
    out->data[out->len] = '\0';
    return true;
}

/* "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...": the conversation in the model's
 * chat format, ending with the opening of the assistant's reply. Returns a malloc'd string. */
static char *render_prompt(const char *schema, const char *text)
{
    static const char intro[] =
        "You extract information from text. Answer with one JSON object that follows this JSON "
        "Schema, with values taken from the user's text:\n";
    char *system = malloc(sizeof intro + strlen(schema));
    if (!system) {
        fprintf(stderr, "error: out of memory\n");
        return NULL;
    }
    strcpy(system, intro);
    strcat(system, schema);
    bonsai_chat_message messages[] = {{"system", system}, {"user", text}};
    /* thinking off: the reply starts with the JSON document right away */
    uint32_t flags = BONSAI_CHAT_ADD_GENERATION_PROMPT;
    size_t len = 0;
    char *prompt = NULL;
    bonsai_status st = bonsai_chat_render(messages, 2, flags, NULL, 0, &len); /* size needed */
    if (st == BONSAI_OK || st == BONSAI_ERR_OUT_OF_RANGE) {
        prompt = malloc(len + 1);
        st = prompt ? bonsai_chat_render(messages, 2, flags, prompt, len + 1, &len)
                    : BONSAI_ERR_NO_MEMORY;
    }
    if (st != BONSAI_OK) {
        fprintf(stderr, "error: %s\n",
                st == BONSAI_ERR_NO_MEMORY ? "out of memory" : bonsai_last_error());
        free(prompt);
        prompt = NULL;
    }
    free(system);
    return prompt;
}

static void usage(const char *argv0)
{
    fprintf(
        stderr,
        "usage: %s [--schema FILE] [-n MAX_TOKENS] [--temp T] [--seed S] MODEL.gguf [TEXT_FILE]\n"
        "  --schema FILE  JSON Schema of the output (default: name, age, city)\n"
        "  -n N           at most N tokens of JSON (default 256); the document is always closed\n"
        "  --temp T       temperature (default 0: greedy)\n"
        "  --seed S       random seed (default 0)\n"
        "The text is read from TEXT_FILE, or from stdin when it is absent or '-'.\n",
        argv0);
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *text_path = NULL, *schema_path = NULL;
    long max_tokens = 256;
    float temperature = 0.0f;
    unsigned long long seed = 0;
    bool ok = true;
    for (int i = 1; i < argc && ok; i++) {
        const char *a = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--schema") && value) {
            schema_path = value;
            i++;
        } else if (!strcmp(a, "-n") && value) {
            max_tokens = strtol(value, &end, 10);
            ok = max_tokens > 0 && max_tokens <= 1L << 24;
        } else if (!strcmp(a, "--temp") && value) {
            temperature = strtof(value, &end);
            ok = temperature >= 0.0f;
        } else if (!strcmp(a, "--seed") && value) {
            seed = strtoull(value, &end, 10);
        } else if (a[0] == '-' && a[1]) {
            ok = false;
        } else if (!model_path) {
            model_path = a;
        } else if (!text_path) {
            text_path = a;
        } else {
            ok = false;
        }
        if (end) {
            ok = ok && end != value && *end == 0;
            i++;
        }
    }
    if (!ok || !model_path) {
        usage(argv[0]);
        return 2;
    }

    /* The inputs: the schema and the text. */
    size_t schema_len = strlen(default_schema), text_len = 0;
    char *schema_file = NULL, *text = NULL;
    if (schema_path && !(schema_file = read_file(schema_path, &schema_len))) return 1;
    const char *schema = schema_file ? schema_file : default_schema;
    if (text_path && strcmp(text_path, "-"))
        text = read_file(text_path, &text_len);
    else if (!(text = read_all(stdin, &text_len)))
        fprintf(stderr, "error: cannot read stdin\n");
    char *prompt = text ? render_prompt(schema, text) : NULL;
    if (!prompt) {
        free(text);
        free(schema_file);
        return 1;
    }

    /* The sampler: the JSON constraint first, then the choice among what it allows. */
    bonsai_model *model = NULL;
    bonsai_session *session = NULL;
    bonsai_sampler *sampler = NULL;
    bonsai_status st = bonsai_model_load(model_path, NULL, &model);
    if (st == BONSAI_OK) st = bonsai_session_create(model, NULL, &session);
    if (st == BONSAI_OK) st = bonsai_sampler_create(seed, &sampler);
    if (st == BONSAI_OK) st = bonsai_sampler_add_json(sampler, model, schema, schema_len);
    if (st == BONSAI_OK && temperature > 0.0f) {
        st = bonsai_sampler_add_top_p(sampler, 0.95f, 1);
        if (st == BONSAI_OK) st = bonsai_sampler_add_temperature(sampler, temperature);
        if (st == BONSAI_OK) st = bonsai_sampler_add_dist(sampler);
    } else if (st == BONSAI_OK) {
        st = bonsai_sampler_add_greedy(sampler);
    }

    output out = {0};
    bonsai_generate_stats stats = {.struct_size = sizeof stats};
    if (st == BONSAI_OK) {
        bonsai_generate_params gp;
        bonsai_generate_params_init(&gp);
        gp.max_tokens = (uint32_t)max_tokens;
        gp.sampler = sampler;
        gp.on_token = collect;
        gp.user_data = &out;
        /* the rendered prompt contains the chat format's special tokens (<|im_start|>...) */
        gp.tokenize_flags = BONSAI_TOKENIZE_ADD_BOS | BONSAI_TOKENIZE_PARSE_SPECIAL;
        st = bonsai_generate(session, prompt, &gp, &stats);
    }

    int rc = 0;
    if (st != BONSAI_OK) {
        fprintf(stderr, "error: %s\n", bonsai_last_error());
        rc = 1;
    } else if (out.oom) {
        fprintf(stderr, "error: out of memory\n");
        rc = 1;
    } else if (!bonsai_sampler_done(sampler)) {
        /* cannot happen while the prompt leaves room in the context: the constraint closes the
         * document in time */
        fprintf(stderr, "error: the JSON document is incomplete (%u tokens generated)\n",
                stats.n_generated);
        rc = 1;
    } else {
        const char *json = out.data ? out.data : "";
        while (*json == ' ' || *json == '\n' || *json == '\t' || *json == '\r') json++;
        printf("%s\n", json);
        fprintf(stderr, "prompt: %u tokens; JSON: %u tokens in %.1f ms (sampling %.1f ms)\n",
                stats.n_prompt, stats.n_generated, stats.generate_ms, stats.sample_ms);
    }

    free(out.data);
    free(prompt);
    free(text);
    free(schema_file);
    bonsai_sampler_free(sampler);
    bonsai_session_free(session);
    bonsai_model_free(model);
    return rc;
}
