/* shiftnn C API example and test.
 *
 * Loads the Fashion-MNIST model of the firmware test (4 bits, int8), runs
 * its test images in a caller-provided arena, checks the logits bit for bit
 * against the host's, applies an affine patch (and undoes it), and checks
 * that bad inputs are error codes, not crashes.
 *
 *   ./shiftnn_example [FIXTURES_DIR]     (default ../../tests/fixtures/firmware)
 *
 * Exit status 0 when every check passes.
 */
#include "shiftnn.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                     \
      fprintf(stderr, __VA_ARGS__);                                            \
      fprintf(stderr, "\n");                                                   \
      failures++;                                                              \
    }                                                                          \
  } while (0)

/* Expect status `want` from `got`; print the library's message. */
static void expect(const char *what, ShiftnnStatus got, ShiftnnStatus want) {
  if (got == want) {
    printf("  negative: %-28s -> %d: %s\n", what, (int)got, shiftnn_last_error());
  } else {
    fprintf(stderr, "FAIL: %s: status %d (expected %d): %s\n", what, (int)got,
            (int)want, shiftnn_last_error());
    failures++;
  }
}

/* Reads a whole file into 64-byte aligned memory (plus `pad` spare bytes). */
static uint8_t *read_file(const char *dir, const char *name, size_t *len, size_t pad) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    exit(2);
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  size_t cap = ((size_t)n + pad + 63) / 64 * 64;
  uint8_t *buf = aligned_alloc(64, cap ? cap : 64);
  if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
    fprintf(stderr, "cannot read %s\n", path);
    exit(2);
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "../../tests/fixtures/firmware";
  printf("shiftnn %s C API example\n", shiftnn_version());

  size_t model_len, images_len, logits_len;
  uint8_t *model_bytes = read_file(dir, "fmnist_b4_int8.shift", &model_len, 0);
  float *images = (float *)read_file(dir, "images.f32", &images_len, 0);
  float *expected = (float *)read_file(dir, "logits.f32", &logits_len, 0);

  /* Open in place and query the model. */
  ShiftnnModel *model = NULL;
  ShiftnnStatus st = shiftnn_model_open(model_bytes, model_len, &model);
  if (st != SHIFTNN_STATUS_OK) {
    fprintf(stderr, "model: %s\n", shiftnn_last_error());
    return 1;
  }
  size_t arena_bytes = 0, n_in = 0, n_out = 0, in_len = 0, out_len = 0, ndim = 0;
  size_t dims[8];
  CHECK(shiftnn_model_arena_bytes(model, &arena_bytes) == SHIFTNN_STATUS_OK, "arena");
  CHECK(shiftnn_model_io_count(model, &n_in, &n_out) == SHIFTNN_STATUS_OK, "io");
  CHECK(shiftnn_model_input_shape(model, 0, dims, 8, &ndim, &in_len) == SHIFTNN_STATUS_OK,
        "input shape");
  printf("model: %zu bytes, %zu input(s), %zu output(s), arena %zu bytes\n", model_len,
         n_in, n_out, arena_bytes);
  printf("input 0: [");
  for (size_t k = 0; k < ndim; k++) printf(k ? ", %zu" : "%zu", dims[k]);
  printf("] (%zu values)\n", in_len);
  CHECK(shiftnn_model_output_shape(model, 0, NULL, 0, &ndim, &out_len) == SHIFTNN_STATUS_OK,
        "output shape");
  printf("output 0: %zu dims, %zu values\n", ndim, out_len);
  size_t n_images = images_len / sizeof(float) / in_len;
  CHECK(n_images * out_len * sizeof(float) == logits_len, "fixture sizes disagree");

  /* The caller's arena: exactly arena_bytes, aligned. */
  uint8_t *arena = aligned_alloc(SHIFTNN_ARENA_ALIGN, (arena_bytes + 63) / 64 * 64);
  ShiftnnSession *session = NULL;
  expect("arena one byte short", shiftnn_session_new(model, arena, arena_bytes - 1, &session),
         SHIFTNN_STATUS_ARENA_TOO_SMALL);
  st = shiftnn_session_new(model, arena, arena_bytes, &session);
  if (st != SHIFTNN_STATUS_OK) {
    fprintf(stderr, "session: %s\n", shiftnn_last_error());
    return 1;
  }

  /* Every image, bit for bit. */
  float *out = calloc(out_len, sizeof(float));
  size_t exact = 0;
  for (size_t i = 0; i < n_images; i++) {
    st = shiftnn_session_run1(session, images + i * in_len, in_len, out, out_len);
    CHECK(st == SHIFTNN_STATUS_OK, "run %zu: %s", i, shiftnn_last_error());
    exact += memcmp(out, expected + i * out_len, out_len * sizeof(float)) == 0;
  }
  printf("logits bit-exact with the host: %zu/%zu images\n", exact, n_images);
  CHECK(exact == n_images, "logits differ");

  /* The general entry point gives the same. */
  const float *ins[1] = {images};
  size_t in_lens[1] = {in_len};
  float *outs[1] = {out};
  size_t out_lens[1] = {out_len};
  CHECK(shiftnn_session_run(session, ins, in_lens, 1, outs, out_lens, 1) == SHIFTNN_STATUS_OK &&
            memcmp(out, expected, out_len * sizeof(float)) == 0,
        "shiftnn_session_run");

  /* Affine patch: shift one layer's beta, see the logits move, restore. */
  size_t n_norms = 0, ch = 0;
  char name[256];
  CHECK(shiftnn_session_norm_count(session, &n_norms) == SHIFTNN_STATUS_OK, "norm count");
  CHECK(shiftnn_session_norm_info(session, 0, name, sizeof name, &ch) == SHIFTNN_STATUS_OK,
        "norm info");
  printf("%zu normalization layers; patching \"%s\" (%zu channels)\n", n_norms, name, ch);
  float *gamma = calloc(ch, sizeof(float)), *beta = calloc(ch, sizeof(float));
  float *beta2 = calloc(ch, sizeof(float));
  CHECK(shiftnn_session_get_norm(session, name, gamma, beta, NULL, NULL, ch) ==
            SHIFTNN_STATUS_OK,
        "get norm");
  for (size_t c = 0; c < ch; c++) beta2[c] = beta[c] + 1.0f;
  CHECK(shiftnn_session_set_norm(session, name, gamma, beta2, NULL, NULL, ch) ==
            SHIFTNN_STATUS_OK,
        "set norm: %s", shiftnn_last_error());
  CHECK(shiftnn_session_run1(session, images, in_len, out, out_len) == SHIFTNN_STATUS_OK, "run");
  int moved = memcmp(out, expected, out_len * sizeof(float)) != 0;
  CHECK(shiftnn_session_set_norm(session, name, gamma, beta, NULL, NULL, ch) ==
            SHIFTNN_STATUS_OK,
        "restore norm");
  CHECK(shiftnn_session_run1(session, images, in_len, out, out_len) == SHIFTNN_STATUS_OK, "run");
  int restored = memcmp(out, expected, out_len * sizeof(float)) == 0;
  printf("affine patch: logits %s, restored %s\n", moved ? "changed" : "UNCHANGED",
         restored ? "bit-exact" : "DIFFERENT");
  CHECK(moved && restored, "affine patch");

  /* Errors, not crashes. */
  expect("input one value short", shiftnn_session_run1(session, images, in_len - 1, out, out_len),
         SHIFTNN_STATUS_WRONG_SIZE);
  expect("null output", shiftnn_session_run1(session, images, in_len, NULL, out_len),
         SHIFTNN_STATUS_NULL_POINTER);
  expect("output overlaps input", shiftnn_session_run1(session, images, in_len, images, out_len),
         SHIFTNN_STATUS_INVALID_ARGUMENT);
  expect("output inside the arena",
         shiftnn_session_run1(session, images, in_len, (float *)arena, out_len),
         SHIFTNN_STATUS_INVALID_ARGUMENT);
  expect("unknown norm layer",
         shiftnn_session_set_norm(session, "no.such.layer", gamma, beta, NULL, NULL, ch),
         SHIFTNN_STATUS_PATCH);
  expect("norm with wrong channels",
         shiftnn_session_set_norm(session, name, gamma, beta, NULL, NULL, ch + 1),
         SHIFTNN_STATUS_PATCH);
  beta2[0] = 0.0f / 0.0f;
  expect("NaN in beta", shiftnn_session_set_norm(session, name, gamma, beta2, NULL, NULL, ch),
         SHIFTNN_STATUS_PATCH);
  expect("null session", shiftnn_session_run1(NULL, images, in_len, out, out_len),
         SHIFTNN_STATUS_NULL_POINTER);

  ShiftnnModel *bad = NULL;
  expect("truncated model", shiftnn_model_open(model_bytes, model_len / 2, &bad),
         SHIFTNN_STATUS_INVALID_MODEL);
  /* A flipped weight byte: the fingerprint check catches it. */
  uint8_t *corrupt = read_file(dir, "fmnist_b4_int8.shift", &model_len, 0);
  corrupt[model_len / 2] ^= 0x5a; /* inside a conv weight tensor */
  expect("corrupt weights", shiftnn_model_open(corrupt, model_len, &bad),
         SHIFTNN_STATUS_INVALID_MODEL);
  /* The same bytes one byte off alignment. */
  uint8_t *shifted = read_file(dir, "fmnist_b4_int8.shift", &model_len, 1);
  memmove(shifted + 1, shifted, model_len);
  expect("misaligned model buffer", shiftnn_model_open(shifted + 1, model_len, &bad),
         SHIFTNN_STATUS_MISALIGNED);
  expect("null model buffer", shiftnn_model_open(NULL, model_len, &bad),
         SHIFTNN_STATUS_NULL_POINTER);
  CHECK(bad == NULL, "a failed open wrote a model");
  /* ...which the copying variant accepts. */
  CHECK(shiftnn_model_open_copy(shifted + 1, model_len, &bad) == SHIFTNN_STATUS_OK,
        "open_copy: %s", shiftnn_last_error());
  shiftnn_model_free(bad);

  shiftnn_session_free(session);
  shiftnn_model_free(model);
  free(out), free(gamma), free(beta), free(beta2), free(arena);
  free(model_bytes), free(images), free(expected), free(corrupt), free(shifted);
  if (failures) {
    printf("C example: FAIL (%d)\n", failures);
    return 1;
  }
  printf("C example: PASS\n");
  return 0;
}
