#define _POSIX_C_SOURCE 200809L
/* Drives libkvtier from C: `abi_test keys|errors|copy|save|load|loop|client-errors ...`.
 * Built and run by ffi/tests/c_abi.rs. */
#include "kvtier.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                 \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, " [last error: %s]\n", kvt_last_error());            \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

static void print_key(const char *what, kvt_key k) {
  printf("%s %016llx%016llx\n", what, (unsigned long long)k.hi, (unsigned long long)k.lo);
}

static size_t unhex(const char *s, uint8_t *out) {
  size_t n = strlen(s) / 2;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    sscanf(s + 2 * i, "%2x", &v);
    out[i] = (uint8_t)v;
  }
  return n;
}

/* keys MODEL REVISION DTYPE LAYOUT B TP_SIZE TP_RANK PP_SIZE PP_RANK SALT_HEX TOKEN... */
static int mode_keys(int argc, char **argv) {
  CHECK(argc >= 12, "usage: keys MODEL REVISION DTYPE LAYOUT B TP TPR PP PPR SALT_HEX TOKENS...");
  uint8_t salt[4096];
  kvt_namespace_params p = {
      .model = argv[2],
      .revision = argv[3],
      .kv_dtype = argv[4],
      .layout_id = argv[5],
      .tokens_per_block = (uint32_t)atoi(argv[6]),
      .tp_size = (uint32_t)atoi(argv[7]),
      .tp_rank = (uint32_t)atoi(argv[8]),
      .pp_size = (uint32_t)atoi(argv[9]),
      .pp_rank = (uint32_t)atoi(argv[10]),
      .salt = salt,
      .salt_len = strcmp(argv[11], "-") == 0 ? 0 : unhex(argv[11], salt),
  };
  kvt_namespace *ns = NULL;
  CHECK(kvt_namespace_new(&p, &ns) == KVT_OK, "namespace_new");
  kvt_key digest;
  CHECK(kvt_namespace_digest(ns, &digest) == KVT_OK, "digest");
  print_key("ns", digest);
  size_t n = (size_t)(argc - 12);
  uint32_t *tokens = calloc(n + 1, sizeof(uint32_t));
  for (size_t i = 0; i < n; i++) tokens[i] = (uint32_t)strtoul(argv[12 + i], NULL, 10);
  size_t cap = kvt_block_count(ns, n);
  kvt_key *keys = calloc(cap + 1, sizeof(kvt_key));
  size_t got = 12345;
  CHECK(kvt_block_keys(ns, tokens, n, NULL, 0, keys, cap, &got) == KVT_OK, "block_keys");
  CHECK(got == cap, "got %zu keys, expected %zu", got, cap);
  for (size_t i = 0; i < got; i++) print_key("key", keys[i]);
  free(keys);
  free(tokens);
  kvt_namespace_free(ns);
  return 0;
}

static int mode_errors(void) {
  CHECK(kvt_abi_version() == KVT_ABI_VERSION, "ABI version %u, header %d", kvt_abi_version(), KVT_ABI_VERSION);
  kvt_namespace *ns = NULL;
  /* NULL pointers. */
  CHECK(kvt_namespace_new(NULL, &ns) == KVT_ERR_NULL, "NULL params");
  CHECK(strstr(kvt_last_error(), "params") != NULL, "message names the argument: %s", kvt_last_error());
  kvt_namespace_params p = {.model = "m", .kv_dtype = "bf16", .layout_id = "vllm-cpu",
                            .tokens_per_block = 4, .tp_size = 2, .tp_rank = 2, .pp_size = 1};
  CHECK(kvt_namespace_new(&p, NULL) == KVT_ERR_NULL, "NULL out");
  /* Bad values: named in the message; out not written. */
  CHECK(kvt_namespace_new(&p, &ns) == KVT_ERR_INVALID && ns == NULL, "tp_rank >= tp_size");
  CHECK(strstr(kvt_last_error(), "tp_rank") != NULL, "message names tp_rank: %s", kvt_last_error());
  p.tp_rank = 1;
  p.kv_dtype = "int3";
  CHECK(kvt_namespace_new(&p, &ns) == KVT_ERR_INVALID && strstr(kvt_last_error(), "int3"), "bad dtype");
  p.kv_dtype = "bfloat16";
  p.model = NULL;
  CHECK(kvt_namespace_new(&p, &ns) == KVT_ERR_NULL && strstr(kvt_last_error(), "params.model"), "NULL model");
  p.model = "m";
  CHECK(kvt_namespace_new(&p, &ns) == KVT_OK && ns != NULL, "valid params");
  CHECK(kvt_last_error()[0] == '\0', "success clears the last error");
  /* Wrong lengths. */
  uint32_t tokens[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  kvt_key keys[2];
  size_t got = 77;
  CHECK(kvt_block_keys(ns, tokens, 9, NULL, 0, keys, 1, &got) == KVT_ERR_INVALID && got == 77, "out_cap too small");
  CHECK(strstr(kvt_last_error(), "out_cap") != NULL, "message names out_cap: %s", kvt_last_error());
  CHECK(kvt_block_keys(ns, NULL, 9, NULL, 0, keys, 2, &got) == KVT_ERR_NULL, "NULL tokens");
  CHECK(kvt_block_keys(ns, tokens, 9, NULL, 0, keys, 2, NULL) == KVT_ERR_NULL, "NULL out_len");
  CHECK(kvt_block_keys(NULL, tokens, 9, NULL, 0, keys, 2, &got) == KVT_ERR_NULL, "NULL namespace");
  CHECK(kvt_block_keys(ns, tokens, 9, NULL, 3, keys, 2, &got) == KVT_ERR_NULL, "NULL extras with n_extras > 0");
  const uint8_t *items[1] = {(const uint8_t *)"lora"};
  size_t lens[1] = {4};
  kvt_extra extras[4] = {{items, lens, 1}, {items, lens, 1}, {items, lens, 1}, {items, lens, 1}};
  CHECK(kvt_block_keys(ns, tokens, 9, extras, 4, keys, 2, &got) == KVT_ERR_INVALID, "more extras than blocks");
  CHECK(kvt_block_keys(ns, tokens, 9, extras, 2, keys, 2, &got) == KVT_OK && got == 2, "extras");
  kvt_key plain[2];
  CHECK(kvt_block_keys(ns, tokens, 9, NULL, 0, plain, 2, &got) == KVT_OK && got == 2, "plain");
  CHECK(plain[0].lo != keys[0].lo, "an extra item changes the key");
  CHECK(kvt_block_count(NULL, 9) == 0 && kvt_block_count(ns, 9) == 2, "block count");
  /* Layouts. */
  kvt_layout *layout = NULL;
  kvt_layout_params lp = {.kind = "vllm-cpu", .num_layers = 2, .num_blocks = 4, .block_size = 4,
                          .num_kv_heads = 1, .head_size = 2, .dtype = "bf16"};
  lp.kind = "tpu-magic";
  CHECK(kvt_layout_new(&lp, &layout) == KVT_ERR_INVALID && layout == NULL, "unknown layout kind");
  lp.kind = "vllm-cpu";
  lp.num_layers = 0;
  CHECK(kvt_layout_new(&lp, &layout) == KVT_ERR_INVALID && strstr(kvt_last_error(), "num_layers"), "zero layers");
  lp.num_layers = 2;
  CHECK(kvt_layout_new(&lp, &layout) == KVT_OK, "layout");
  uint8_t l0[256], l1[256], obj[256];
  uint8_t *layers[2] = {l0, l1};
  size_t olen = (size_t)kvt_layout_object_len(layout);
  CHECK(olen == 2 * 4 * 1 * 2 * 2 * 2, "object len %zu", olen);
  CHECK(kvt_gather(layout, layers, 1, 0, obj, olen) == KVT_ERR_INVALID, "wrong layer count");
  CHECK(kvt_gather(layout, layers, 2, 0, obj, olen + 1) == KVT_ERR_INVALID, "wrong object length");
  CHECK(kvt_gather(layout, layers, 2, 4, obj, olen) == KVT_ERR_INVALID && strstr(kvt_last_error(), "block id 4"), "block out of range");
  uint8_t *bad[2] = {l0, NULL};
  CHECK(kvt_gather(layout, bad, 2, 0, obj, olen) == KVT_ERR_NULL && strstr(kvt_last_error(), "layers[1]"), "NULL layer");
  CHECK(kvt_gather(NULL, layers, 2, 0, obj, olen) == KVT_ERR_NULL, "NULL layout");
  CHECK(kvt_layout_object_len(NULL) == 0, "object len of NULL");
  /* free(NULL) is a no-op. */
  kvt_layout_free(NULL);
  kvt_namespace_free(NULL);
  kvt_layout_free(layout);
  kvt_namespace_free(ns);
  CHECK(strcmp(kvt_status_name(KVT_ERR_CORRUPT), "KVT_ERR_CORRUPT") == 0, "status name");
  printf("errors ok\n");
  return 0;
}

/* Gather a block out of vLLM's CPU layout and scatter it into another engine's memory. */
static int mode_copy(void) {
  kvt_layout_params lp = {.kind = "vllm-cpu", .num_layers = 3, .num_blocks = 8, .block_size = 16,
                          .num_kv_heads = 2, .head_size = 8, .dtype = "bfloat16"};
  kvt_layout *layout = NULL;
  CHECK(kvt_layout_new(&lp, &layout) == KVT_OK, "layout");
  size_t lb = (size_t)kvt_layout_layer_bytes(layout), ol = (size_t)kvt_layout_object_len(layout);
  uint8_t *a = malloc(3 * lb), *b = calloc(3, lb), *obj = malloc(ol);
  for (size_t i = 0; i < 3 * lb; i++) a[i] = (uint8_t)(i * 31 + 7);
  uint8_t *la[3] = {a, a + lb, a + 2 * lb}, *lb_[3] = {b, b + lb, b + 2 * lb};
  for (uint32_t blk = 0; blk < 8; blk += 3) {
    CHECK(kvt_gather(layout, la, 3, blk, obj, ol) == KVT_OK, "gather %u", blk);
    CHECK(kvt_scatter(layout, lb_, 3, blk, obj, ol) == KVT_OK, "scatter %u", blk);
  }
  size_t block_bytes = lb / 8;
  for (int l = 0; l < 3; l++)
    for (uint32_t blk = 0; blk < 8; blk++) {
      int copied = blk % 3 == 0;
      const uint8_t *src = la[l] + blk * block_bytes, *dst = lb_[l] + blk * block_bytes;
      for (size_t i = 0; i < block_bytes; i++)
        CHECK(copied ? dst[i] == src[i] : dst[i] == 0, "layer %d block %u byte %zu", l, blk, i);
    }
  free(a);
  free(b);
  free(obj);
  kvt_layout_free(layout);
  printf("copy ok\n");
  return 0;
}

/* ---- The agent client: run against a `kvtier up --object-bytes 32KiB`. ---- */

#define NB 256
static const kvt_layout_params LP = {.kind = "vllm-cpu", .num_layers = 4, .num_blocks = 300, .block_size = 16,
                                     .num_kv_heads = 2, .head_size = 64, .dtype = "bfloat16"};

static uint8_t pattern(int layer, size_t i) { return (uint8_t)((i * 2654435761u >> 7) ^ (unsigned)(layer * 37)); }

static kvt_namespace *test_namespace(void) {
  kvt_namespace_params p = {.model = "c-test/model", .kv_dtype = "bfloat16", .layout_id = "vllm-cpu",
                            .tokens_per_block = 16, .tp_size = 1, .pp_size = 1};
  kvt_namespace *ns = NULL;
  CHECK(kvt_namespace_new(&p, &ns) == KVT_OK, "namespace");
  return ns;
}

static void prompt_keys(kvt_namespace *ns, kvt_key *keys, size_t n_blocks) {
  size_t n = n_blocks * 16;
  uint32_t *tokens = malloc(n * sizeof(uint32_t));
  for (size_t i = 0; i < n; i++) tokens[i] = (uint32_t)((i * 7919u) % 128000u);
  size_t got = 0;
  CHECK(kvt_block_keys(ns, tokens, n, NULL, 0, keys, n_blocks, &got) == KVT_OK && got == n_blocks, "keys");
  free(tokens);
}

static kvt_client *connect_client(const char *socket, kvt_layout *layout, uint32_t timeout_ms) {
  kvt_client_params cp = {.socket = socket, .layout = layout, .engine = "abi_test", .timeout_ms = timeout_ms};
  kvt_client *c = NULL;
  CHECK(kvt_client_connect(&cp, &c) == KVT_OK && c != NULL, "connect to %s", socket);
  return c;
}

static uint8_t **alloc_layers(kvt_layout *layout, int fill) {
  size_t lb = (size_t)kvt_layout_layer_bytes(layout);
  uint8_t **layers = malloc(LP.num_layers * sizeof(uint8_t *));
  for (uint32_t l = 0; l < LP.num_layers; l++) {
    layers[l] = calloc(1, lb);
    if (fill)
      for (size_t i = 0; i < lb; i++) layers[l][i] = pattern((int)l, i);
  }
  return layers;
}

/* One engine saves 256 blocks (engine block ids 0..255). */
static int mode_save(const char *socket) {
  kvt_layout *layout = NULL;
  CHECK(kvt_layout_new(&LP, &layout) == KVT_OK, "layout");
  kvt_client *c = connect_client(socket, layout, 2000);
  uint8_t **layers = alloc_layers(layout, 1);
  CHECK(kvt_register_kv(c, layout, layers, LP.num_layers) == KVT_OK, "register");
  kvt_namespace *ns = test_namespace();
  kvt_key keys[NB];
  uint32_t ids[NB];
  prompt_keys(ns, keys, NB);
  for (uint32_t i = 0; i < NB; i++) ids[i] = i;
  size_t stored = 0;
  CHECK(kvt_save(c, keys, ids, NB, &stored) == KVT_OK, "save");
  CHECK(stored == NB, "stored %zu", stored);
  CHECK(kvt_save(c, keys, ids, NB, &stored) == KVT_OK && stored == 0, "a second save stores nothing (dedup)");
  printf("saved %zu\n", (size_t)NB);
  kvt_client_free(c);
  kvt_layout_free(layout);
  kvt_namespace_free(ns);
  return 0;
}

/* Another engine (process) finds the prefix and loads it into other block ids of its own memory. */
static int mode_load(const char *socket) {
  kvt_layout *layout = NULL;
  CHECK(kvt_layout_new(&LP, &layout) == KVT_OK, "layout");
  kvt_client *c = connect_client(socket, layout, 2000);
  uint8_t **layers = alloc_layers(layout, 0);
  CHECK(kvt_register_kv(c, layout, layers, LP.num_layers) == KVT_OK, "register");
  kvt_namespace *ns = test_namespace();
  kvt_key keys[NB];
  uint32_t ids[NB];
  prompt_keys(ns, keys, NB);
  uint32_t prefix = 0;
  CHECK(kvt_lookup(c, keys, NB, &prefix) == KVT_OK && prefix == NB, "lookup prefix %u", prefix);
  for (uint32_t i = 0; i < NB; i++) ids[i] = 299 - i;
  kvt_ticket *t = NULL;
  CHECK(kvt_load_start(c, keys, ids, NB, &t) == KVT_OK, "load_start");
  uint8_t loaded[NB];
  CHECK(kvt_ticket_wait(t, 10000, loaded, NB) == KVT_OK, "wait");
  kvt_ticket_free(t);
  size_t block_bytes = (size_t)kvt_layout_layer_bytes(layout) / LP.num_blocks;
  for (uint32_t i = 0; i < NB; i++) {
    CHECK(loaded[i] == 1, "block %u not loaded", i);
    for (uint32_t l = 0; l < LP.num_layers; l++)
      for (size_t b = 0; b < block_bytes; b++)
        CHECK(layers[l][(size_t)ids[i] * block_bytes + b] == pattern((int)l, (size_t)i * block_bytes + b),
              "layer %u block %u byte %zu", l, i, b);
  }
  printf("load ok\n");
  kvt_client_free(c);
  kvt_layout_free(layout);
  kvt_namespace_free(ns);
  return 0;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Saves 16 blocks, then loads them in a loop, one line per round: "ok N MS" or "err STATUS MS".
 * The harness kills and restarts the agent meanwhile. Stops at EOF on stdin. */
static int mode_loop(const char *socket) {
  kvt_layout *layout = NULL;
  CHECK(kvt_layout_new(&LP, &layout) == KVT_OK, "layout");
  kvt_client *c = connect_client(socket, layout, 1000);
  uint8_t **src = alloc_layers(layout, 1), **dst = alloc_layers(layout, 0);
  kvt_namespace *ns = test_namespace();
  kvt_key keys[16];
  uint32_t ids[16];
  prompt_keys(ns, keys, 16);
  for (uint32_t i = 0; i < 16; i++) ids[i] = i;
  for (int round = 0; round < 100000; round++) {
    double t0 = now_ms();
    kvt_status st = kvt_register_kv(c, layout, src, LP.num_layers);
    size_t stored = 0;
    if (st == KVT_OK) st = kvt_save(c, keys, ids, 16, &stored);
    uint8_t loaded[16] = {0};
    kvt_ticket *t = NULL;
    if (st == KVT_OK) st = kvt_register_kv(c, layout, dst, LP.num_layers);
    if (st == KVT_OK) st = kvt_load_start(c, keys, ids, 16, &t);
    if (st == KVT_OK) st = kvt_ticket_wait(t, 5000, loaded, 16);
    kvt_ticket_free(t);
    int n = 0;
    for (int i = 0; i < 16; i++) n += loaded[i];
    if (st == KVT_OK)
      printf("ok %d %.0f\n", n, now_ms() - t0);
    else
      printf("err %s %.0f\n", kvt_status_name(st), now_ms() - t0);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) break; /* the harness paces the rounds */
  }
  kvt_client_free(c);
  kvt_layout_free(layout);
  kvt_namespace_free(ns);
  return 0;
}

/* Client misuse against a live agent: each gets its status and a message. */
static int mode_client_errors(const char *socket) {
  kvt_layout *layout = NULL;
  CHECK(kvt_layout_new(&LP, &layout) == KVT_OK, "layout");
  kvt_client *c = NULL;
  kvt_client_params bad = {.socket = "/nonexistent/agent.sock", .layout = layout, .timeout_ms = 500};
  CHECK(kvt_client_connect(&bad, &c) == KVT_ERR_UNAVAILABLE && c == NULL, "no agent there");
  CHECK(strstr(kvt_last_error(), "agent") != NULL, "message: %s", kvt_last_error());
  kvt_client_params nolayout = {.socket = socket};
  CHECK(kvt_client_connect(&nolayout, &c) == KVT_ERR_NULL && strstr(kvt_last_error(), "layout"), "NULL layout");
  kvt_layout_params other = LP;
  other.head_size = 32;
  kvt_layout *small = NULL;
  CHECK(kvt_layout_new(&other, &small) == KVT_OK, "layout");
  kvt_client_params wrong = {.socket = socket, .layout = small};
  CHECK(kvt_client_connect(&wrong, &c) == KVT_ERR_INVALID && strstr(kvt_last_error(), "object"), "object size mismatch: %s", kvt_last_error());
  c = connect_client(socket, layout, 2000);
  kvt_namespace *ns = test_namespace();
  kvt_key keys[4];
  uint32_t ids[4] = {0, 1, 2, 3};
  prompt_keys(ns, keys, 4);
  size_t stored = 0;
  CHECK(kvt_save(c, keys, ids, 4, &stored) == KVT_ERR_INVALID && strstr(kvt_last_error(), "kvt_register_kv"), "save before register: %s", kvt_last_error());
  uint8_t **layers = alloc_layers(layout, 1);
  CHECK(kvt_register_kv(c, layout, layers, 3) == KVT_ERR_INVALID, "wrong layer count");
  CHECK(kvt_register_kv(c, small, layers, LP.num_layers) == KVT_ERR_INVALID, "another layout");
  CHECK(kvt_register_kv(c, layout, layers, LP.num_layers) == KVT_OK, "register");
  uint32_t bad_ids[4] = {0, 1, 2, 300};
  CHECK(kvt_save(c, keys, bad_ids, 4, &stored) == KVT_ERR_INVALID && strstr(kvt_last_error(), "300"), "block id out of range");
  CHECK(kvt_save(c, NULL, ids, 4, &stored) == KVT_ERR_NULL, "NULL keys");
  CHECK(kvt_save(NULL, keys, ids, 4, &stored) == KVT_ERR_NULL, "NULL client");
  uint32_t prefix = 9;
  CHECK(kvt_lookup(c, keys, 4, NULL) == KVT_ERR_NULL, "NULL prefix");
  kvt_ticket *t = NULL;
  CHECK(kvt_load_start(c, keys, ids, 4, &t) == KVT_OK, "load_start");
  uint8_t loaded[4];
  CHECK(kvt_ticket_wait(t, 5000, loaded, 3) == KVT_ERR_INVALID, "wrong n on wait");
  CHECK(kvt_ticket_wait(t, 5000, loaded, 4) == KVT_OK, "wait");
  CHECK(loaded[0] == 0, "nothing was saved: a miss, not garbage");
  kvt_ticket_free(t);
  kvt_ticket_free(NULL);
  /* The tests build libkvtier without the `cuda` feature: device memory is refused clearly. */
  uint64_t dev[4] = {1, 2, 3, 4};
  CHECK(kvt_register_kv_device(c, layout, dev, 4, 0) == KVT_ERR_INVALID && strstr(kvt_last_error(), "CUDA"),
        "device memory without CUDA support: %s", kvt_last_error());
  kvt_client_close(c);
  CHECK(kvt_lookup(c, keys, 4, &prefix) == KVT_ERR_CLOSED && prefix == 9, "closed handle");
  CHECK(kvt_save(c, keys, ids, 4, &stored) == KVT_ERR_CLOSED, "closed handle");
  kvt_client_close(c);
  kvt_client_free(c);
  kvt_client_free(NULL);
  kvt_client_close(NULL);
  kvt_layout_free(small);
  kvt_layout_free(layout);
  kvt_namespace_free(ns);
  printf("client errors ok\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "keys") == 0) return mode_keys(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "errors") == 0) return mode_errors();
  if (argc >= 2 && strcmp(argv[1], "copy") == 0) return mode_copy();
  if (argc >= 3 && strcmp(argv[1], "save") == 0) return mode_save(argv[2]);
  if (argc >= 3 && strcmp(argv[1], "load") == 0) return mode_load(argv[2]);
  if (argc >= 3 && strcmp(argv[1], "loop") == 0) return mode_loop(argv[2]);
  if (argc >= 3 && strcmp(argv[1], "client-errors") == 0) return mode_client_errors(argv[2]);
  fprintf(stderr, "usage: abi_test keys|errors|copy|save|load|loop|client-errors\n");
  return 2;
}
