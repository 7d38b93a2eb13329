/* vlprep: JSONL conversations + images -> dataset.h5 (the format of
 * dataset.h), with the model's tokenizer, chat template and image
 * preprocessing.
 *
 *   vlprep --model MODEL --input FILE.jsonl --output FILE.h5 [options]
 *
 * MODEL is a Hugging Face folder (config.json, tokenizer.json,
 * preprocessor_config.json) or a vltrain YAML config (model.family,
 * model.tokens.*, model.vision.*; the tokenizer from model.tokenizer or
 * model.path/tokenizer.json; the preprocessor from model.preprocessor or
 * model.path/preprocessor_config.json, else the family's defaults).
 *
 * Pipeline: the main thread reads the input; N workers take lines in turn
 * (parse, decode + smart_resize + bicubic each image, chat template ids and
 * mask, length policy); the main thread writes the results in input order.
 * Bad records print "FILE:LINE: what is wrong" and stop the run (exit 1)
 * unless --skip-bad.  The output appears at its name only when complete.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "config.h"
#include "dataset.h"
#include "err.h"
#include "image.h"
#include "sha256.h"
#include "tokenizer.h"

#ifndef VL_INPUTS_DIR
#define VL_INPUTS_DIR "inputs"
#endif

/* ---- interrupted: remove the writer's temporary file ------------------- */
static char tmp_path[VL_PATH_MAX + 64];

static void on_signal(int sig) {
  if (tmp_path[0]) unlink(tmp_path);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* ---- options and the model's preprocessing ------------------------------- */
typedef struct {
  const char *model, *input, *output;
  int max_seq_len;
  int truncate;          /* 0: skip over-long samples, 1: truncate them */
  double val_fraction;
  long val_count;
  int threads;
  int skip_bad;
  uint64_t seed;
  int quiet;
  int rgb;               /* --pixels rgb: store resized RGB instead of the files' bytes */
} options;

typedef struct {
  vl_family family;
  char tokenizer[VL_PATH_MAX + 64];
  int vocab_size;
  vl_token_config tokens;
  int patch, temporal, merge;
  long min_pixels, max_pixels;
  float mean[3], std[3];
} prep_model;

static void family_defaults(prep_model *m) {
  if (m->family == VL_FAMILY_QWEN2_VL) {
    /* Qwen/Qwen2-VL-*-Instruct preprocessor_config.json */
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    m->patch = 14; m->temporal = 2; m->merge = 2;
    m->min_pixels = 3136; m->max_pixels = 12845056;
    memcpy(m->mean, mean, sizeof mean);
    memcpy(m->std, std, sizeof std);
  } else {
    /* Qwen/Qwen3-VL-*-Instruct preprocessor_config.json */
    m->patch = 16; m->temporal = 2; m->merge = 2;
    m->min_pixels = 65536; m->max_pixels = 16777216;
    for (int i = 0; i < 3; i++) m->mean[i] = m->std[i] = 0.5f;
  }
}

static int read_file(const char *path, char **text, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot open (%s)", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0) { fclose(f); VL_ERROR(VL_EIO, "%s: cannot seek", path); }
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (!b) { fclose(f); VL_ERROR(VL_ENOMEM, "%s: %ld bytes", path, n); }
  if (fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); fclose(f); VL_ERROR(VL_EIO, "%s: read failed", path); }
  fclose(f);
  b[n] = 0;
  *text = b;
  *len = (size_t)n;
  return VL_OK;
}

static int load_json(const char *path, cJSON **out) {
  char *text;
  size_t len;
  VL_CALL(read_file(path, &text, &len));
  *out = cJSON_ParseWithLength(text, len);
  free(text);
  if (!*out) VL_ERROR(VL_EIO, "%s: not valid JSON", path);
  return VL_OK;
}

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int json_int(const cJSON *o, const char *key, int *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(x)) return 0;
  *v = x->valueint;
  return 1;
}

/* preprocessor_config.json over the family defaults: patch_size,
 * temporal_patch_size, merge_size, image_mean/std, size.shortest_edge /
 * longest_edge, then min_pixels / max_pixels (which win, as in
 * transformers). */
static int read_preprocessor(prep_model *m, const char *path) {
  cJSON *j;
  VL_CALL(load_json(path, &j));
  json_int(j, "patch_size", &m->patch);
  json_int(j, "temporal_patch_size", &m->temporal);
  json_int(j, "merge_size", &m->merge);
  const char *ms[2] = {"image_mean", "image_std"};
  float *dst[2] = {m->mean, m->std};
  for (int k = 0; k < 2; k++) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, ms[k]);
    if (!a) continue;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 3) { cJSON_Delete(j); VL_ERROR(VL_EINVAL, "%s: %s: expected 3 numbers", path, ms[k]); }
    for (int i = 0; i < 3; i++) dst[k][i] = (float)cJSON_GetArrayItem(a, i)->valuedouble;
  }
  const cJSON *size = cJSON_GetObjectItemCaseSensitive(j, "size"), *x;
  if ((x = cJSON_GetObjectItemCaseSensitive(size, "shortest_edge")) && cJSON_IsNumber(x)) m->min_pixels = (long)x->valuedouble;
  if ((x = cJSON_GetObjectItemCaseSensitive(size, "longest_edge")) && cJSON_IsNumber(x)) m->max_pixels = (long)x->valuedouble;
  if ((x = cJSON_GetObjectItemCaseSensitive(j, "min_pixels")) && cJSON_IsNumber(x)) m->min_pixels = (long)x->valuedouble;
  if ((x = cJSON_GetObjectItemCaseSensitive(j, "max_pixels")) && cJSON_IsNumber(x)) m->max_pixels = (long)x->valuedouble;
  cJSON_Delete(j);
  if (m->patch < 1 || m->merge < 1 || m->temporal < 1 || m->min_pixels < 1 || m->max_pixels < m->min_pixels)
    VL_ERROR(VL_EINVAL, "%s: patch %d, merge %d, temporal %d, min_pixels %ld, max_pixels %ld", path,
             m->patch, m->merge, m->temporal, m->min_pixels, m->max_pixels);
  return VL_OK;
}

/* A Hugging Face folder: config.json (model_type, token ids, vocab size,
 * vision patch and merge), tokenizer.json, preprocessor_config.json. */
static int model_from_folder(prep_model *m, const char *dir) {
  char p[VL_PATH_MAX + 64];
  cJSON *j;
  snprintf(p, sizeof p, "%s/config.json", dir);
  VL_CALL(load_json(p, &j));
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
  const char *t = cJSON_IsString(mt) ? mt->valuestring : "";
  int rc = VL_OK;
  if (!strcmp(t, "qwen3_vl")) m->family = VL_FAMILY_QWEN3_VL;
  else if (!strcmp(t, "qwen2_vl")) m->family = VL_FAMILY_QWEN2_VL;
  else VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: model_type \"%s\" (vlprep knows qwen3_vl and qwen2_vl)", p, t);
  family_defaults(m);
  const cJSON *tc = cJSON_GetObjectItemCaseSensitive(j, "text_config");
  if (!json_int(j, "vocab_size", &m->vocab_size) && !json_int(tc, "vocab_size", &m->vocab_size))
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: no vocab_size", p);
  m->tokens.image_token_id = 151655; m->tokens.video_token_id = 151656;
  m->tokens.vision_start_token_id = 151652; m->tokens.vision_end_token_id = 151653;
  json_int(j, "image_token_id", &m->tokens.image_token_id);
  json_int(j, "video_token_id", &m->tokens.video_token_id);
  json_int(j, "vision_start_token_id", &m->tokens.vision_start_token_id);
  json_int(j, "vision_end_token_id", &m->tokens.vision_end_token_id);
  const cJSON *vc = cJSON_GetObjectItemCaseSensitive(j, "vision_config");
  json_int(vc, "patch_size", &m->patch);
  json_int(vc, "spatial_merge_size", &m->merge);
  json_int(vc, "temporal_patch_size", &m->temporal);
  snprintf(m->tokenizer, sizeof m->tokenizer, "%s/tokenizer.json", dir);
  snprintf(p, sizeof p, "%s/preprocessor_config.json", dir);
  if (file_exists(p)) VL_CALL_GOTO(rc, done, read_preprocessor(m, p));
done:
  cJSON_Delete(j);
  return rc;
}

/* A path of the YAML file: absolute, else against the YAML's folder, else
 * against the source tree's inputs/ (as include: does). */
static void resolve(char *out, size_t n, const char *yaml, const char *rel) {
  if (rel[0] == '/') { snprintf(out, n, "%s", rel); return; }
  char *d = strdup(yaml);
  snprintf(out, n, "%s/%s", d ? dirname(d) : ".", rel);
  free(d);
  if (!file_exists(out)) {
    char alt[VL_PATH_MAX + 64];
    snprintf(alt, sizeof alt, "%s/%s", VL_INPUTS_DIR, rel);
    if (file_exists(alt)) snprintf(out, n, "%s", alt);
  }
}

static int model_from_yaml(prep_model *m, const char *path) {
  vl_config cfg;
  VL_CALL(vl_config_load(&cfg, path));
  const vl_model_config *mc = &cfg.model;
  m->family = mc->family;
  family_defaults(m);
  m->vocab_size = mc->text.vocab_size;
  m->tokens = mc->tokens;
  char mp[VL_PATH_MAX + 64] = "", p[VL_PATH_MAX + 64];
  if (mc->path[0]) resolve(mp, sizeof mp, path, mc->path);
  int rc = VL_OK;
  if (mc->tokenizer[0]) resolve(m->tokenizer, sizeof m->tokenizer, path, mc->tokenizer);
  else if (mp[0]) snprintf(m->tokenizer, sizeof m->tokenizer, "%s/tokenizer.json", mp);
  else VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: no tokenizer: set model.tokenizer or model.path", path);
  if (mc->preprocessor[0]) {
    resolve(p, sizeof p, path, mc->preprocessor);
    VL_CALL_GOTO(rc, done, read_preprocessor(m, p));
  } else if (mp[0]) {
    snprintf(p, sizeof p, "%s/preprocessor_config.json", mp);
    if (file_exists(p)) VL_CALL_GOTO(rc, done, read_preprocessor(m, p));
  }
  if (m->patch != mc->vision.patch_size || m->merge != mc->vision.spatial_merge_size)
    VL_ERROR_GOTO(rc, done, VL_EINVAL,
                  "%s: the preprocessor's patch %d / merge %d differ from model.vision.patch_size %d / "
                  "spatial_merge_size %d", path, m->patch, m->merge, mc->vision.patch_size,
                  mc->vision.spatial_merge_size);
done:
  vl_config_free(&cfg);
  return rc;
}

static int model_load(prep_model *m, const char *arg) {
  memset(m, 0, sizeof *m);
  struct stat st;
  if (stat(arg, &st) != 0) VL_ERROR(VL_EIO, "--model %s: no such file or folder", arg);
  if (S_ISDIR(st.st_mode)) VL_CALL(model_from_folder(m, arg));
  else VL_CALL(model_from_yaml(m, arg));
  if (!file_exists(m->tokenizer)) VL_ERROR(VL_EIO, "%s: tokenizer not found", m->tokenizer);
  return VL_OK;
}

/* ---- one record ------------------------------------------------------------ */
enum { REC_OK = 0, REC_BAD, REC_LONG, REC_BLANK, REC_FATAL };

typedef struct {
  int status;
  int truncated;
  char msg[4096];
  int32_t *ids;
  uint8_t *mask;
  int n_tokens;
  vl_image *images;    /* resized (--pixels rgb); else only w, h: the size to resize to */
  uint8_t **encoded;   /* the image files' bytes (--pixels encoded) */
  size_t *n_encoded;
  int n_alloc;         /* entries of images, encoded, n_encoded */
  int32_t (*grids)[3];
  int n_images;
  size_t bytes_in;     /* image file bytes */
} result;

static void result_free(result *r) {
  free(r->ids);
  free(r->mask);
  for (int i = 0; i < r->n_alloc; i++) {
    vl_image_free(&r->images[i]);
    free(r->encoded[i]);
  }
  free(r->images);
  free(r->encoded);
  free(r->n_encoded);
  free(r->grids);
  memset(r, 0, sizeof *r);
}

typedef struct {
  const options *opt;
  const prep_model *m;
  const char *dir;     /* the JSONL file's folder */
} job_ctx;

#define BAD(r, ...) do { (r)->status = REC_BAD; snprintf((r)->msg, sizeof (r)->msg, __VA_ARGS__); goto out; } while (0)

static int count_tags(const char *s) {
  int n = 0;
  for (const char *p = strstr(s, "<image>"); p; p = strstr(p + 7, "<image>")) n++;
  return n;
}

/* Cuts the sample to max tokens; an image cut in two goes with the rest.
 * Returns 0 when nothing supervised is left. */
static int truncate_sample(result *r, const vl_chat_tokens *t, int max, int merge) {
  size_t n = (size_t)max;
  int keep = 0;
  for (int i = 0; i < t->n_images; i++) {
    size_t end = t->image_start[i] + 2 + (size_t)vl_chat_image_tokens(r->grids[i], merge);
    if (end <= n) keep = i + 1;
    else { if (t->image_start[i] < n) n = t->image_start[i]; break; }
  }
  for (int i = keep; i < r->n_images; i++) {
    vl_image_free(&r->images[i]);
    if (r->encoded) { free(r->encoded[i]); r->encoded[i] = NULL; }
  }
  r->n_images = keep;
  size_t sup = 0;
  for (size_t i = 0; i < n; i++) sup += t->mask[i];
  r->n_tokens = (int)n;
  return sup > 0;
}

static void process_line(const job_ctx *c, vl_chat *chat, vl_chat_tokens *tok, const char *line,
                         size_t len, result *r) {
  memset(r, 0, sizeof *r);
  size_t k = 0;
  while (k < len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
  if (k == len) { r->status = REC_BLANK; return; }
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(line, len, &end, 0);
  vl_chat_message *msgs = NULL;
  if (!j) BAD(r, "malformed JSON near column %ld", end ? (long)(end - line) + 1 : 1L);
  if (!cJSON_IsObject(j)) BAD(r, "expected a JSON object {\"messages\": [...], \"images\": [...]}");
  const cJSON *ms = cJSON_GetObjectItemCaseSensitive(j, "messages");
  if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) == 0) BAD(r, "no \"messages\" list");
  int nm = cJSON_GetArraySize(ms), tags = 0, i = 0;
  msgs = calloc((size_t)nm, sizeof *msgs);
  if (!msgs) { r->status = REC_FATAL; snprintf(r->msg, sizeof r->msg, "out of memory"); goto out; }
  const cJSON *e;
  cJSON_ArrayForEach(e, ms) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
    if (!cJSON_IsString(role)) BAD(r, "message %d: no \"role\" string", i + 1);
    if (!cJSON_IsString(content)) BAD(r, "message %d: \"content\" is not a string", i + 1);
    msgs[i].role = role->valuestring;
    msgs[i].content = content->valuestring;
    if (!strcmp(role->valuestring, "user")) tags += count_tags(content->valuestring);
    i++;
  }
  const cJSON *ims = cJSON_GetObjectItemCaseSensitive(j, "images");
  if (ims && !cJSON_IsArray(ims) && !cJSON_IsNull(ims)) BAD(r, "\"images\" is not a list");
  int ni = cJSON_IsArray(ims) ? cJSON_GetArraySize(ims) : 0;
  if (tags != ni)
    BAD(r, "%d <image> placeholder%s in user messages but %d image%s listed", tags, tags == 1 ? "" : "s",
        ni, ni == 1 ? "" : "s");
  int has_assistant = 0;
  for (i = 0; i < nm; i++) has_assistant |= !strcmp(msgs[i].role, "assistant");
  if (!has_assistant) BAD(r, "no assistant message (nothing to learn)");
  r->images = calloc((size_t)ni + 1, sizeof *r->images);
  r->grids = calloc((size_t)ni + 1, sizeof *r->grids);
  r->encoded = calloc((size_t)ni + 1, sizeof *r->encoded);
  r->n_encoded = calloc((size_t)ni + 1, sizeof *r->n_encoded);
  if (r->images && r->encoded) r->n_alloc = ni;
  if (!r->images || !r->grids || !r->encoded || !r->n_encoded) { r->status = REC_FATAL; snprintf(r->msg, sizeof r->msg, "out of memory"); goto out; }
  const prep_model *m = c->m;
  i = 0;
  cJSON_ArrayForEach(e, ims) {
    if (!cJSON_IsString(e)) BAD(r, "image %d: not a path string", i + 1);
    char path[VL_PATH_MAX * 2];
    if (e->valuestring[0] == '/') snprintf(path, sizeof path, "%s", e->valuestring);
    else snprintf(path, sizeof path, "%s/%s", c->dir, e->valuestring);
    struct stat st;
    if (stat(path, &st) != 0)
      BAD(r, "image %d: %s: %s", i + 1, path,
          errno == ENOENT ? "no such file" : errno == EACCES ? "permission denied" : "cannot access");
    r->bytes_in += (size_t)st.st_size;
    /* decoded in any case: an undecodable image is caught here, not in training */
    vl_image raw;
    uint8_t *bytes = NULL;
    size_t nbytes = 0;
    if (vl_image_read_file(path, &bytes, &nbytes) != VL_OK) BAD(r, "image %d: %s", i + 1, vl_err_last());
    r->encoded[i] = bytes;
    r->n_encoded[i] = nbytes;
    if (vl_image_decode(&raw, bytes, nbytes, path) != VL_OK) BAD(r, "image %d: %s", i + 1, vl_err_last());
    int oh, ow;
    int rc = vl_smart_resize(raw.h, raw.w, m->patch * m->merge, m->min_pixels, m->max_pixels, &oh, &ow);
    if (rc == VL_OK && c->opt->rgb) {
      rc = vl_image_resize_bicubic(&raw, ow, oh, &r->images[i]);
      free(r->encoded[i]);
      r->encoded[i] = NULL;
    } else if (rc == VL_OK) {
      r->images[i] = (vl_image){ow, oh, NULL};
    }
    vl_image_free(&raw);
    if (rc == VL_ENOMEM) { r->status = REC_FATAL; snprintf(r->msg, sizeof r->msg, "%s", vl_err_last()); goto out; }
    if (rc != VL_OK) BAD(r, "image %d: %s: %s", i + 1, e->valuestring, vl_err_last());
    r->grids[i][0] = 1;
    r->grids[i][1] = oh / m->patch;
    r->grids[i][2] = ow / m->patch;
    r->n_images = ++i;
  }
  int rc = vl_chat_encode(chat, msgs, nm, (const int32_t(*)[3])r->grids, ni, tok);
  if (rc == VL_EINVAL) BAD(r, "%s", vl_err_last());
  if (rc != VL_OK) { r->status = REC_FATAL; snprintf(r->msg, sizeof r->msg, "%s", vl_err_last()); goto out; }
  r->n_tokens = (int)tok->n;
  if (tok->n > (size_t)c->opt->max_seq_len) {
    if (!c->opt->truncate || !truncate_sample(r, tok, c->opt->max_seq_len, m->merge)) {
      r->status = REC_LONG;
      snprintf(r->msg, sizeof r->msg, "%zu tokens > --max-seq-len %d%s", tok->n, c->opt->max_seq_len,
               c->opt->truncate ? " and nothing supervised before the cut" : "");
      goto out;
    }
    r->truncated = 1;
  }
  r->ids = malloc((size_t)r->n_tokens * sizeof *r->ids);
  r->mask = malloc((size_t)r->n_tokens);
  if (!r->ids || !r->mask) { r->status = REC_FATAL; snprintf(r->msg, sizeof r->msg, "out of memory"); goto out; }
  memcpy(r->ids, tok->ids, (size_t)r->n_tokens * sizeof *r->ids);
  memcpy(r->mask, tok->mask, (size_t)r->n_tokens);
  r->status = REC_OK;
out:
  free(msgs);
  cJSON_Delete(j);
  if (r->status != REC_OK) {
    int keep_in = (int)r->bytes_in;
    int st = r->status, tr = r->truncated;
    char msg[sizeof r->msg];
    memcpy(msg, r->msg, sizeof msg);
    result_free(r);
    r->status = st;
    r->truncated = tr;
    r->bytes_in = (size_t)keep_in;
    memcpy(r->msg, msg, sizeof msg);
  }
}

/* ---- the worker pool: lines in, results out in input order -------------- */
typedef struct {
  job_ctx ctx;
  const char *text;
  const size_t *line_start, *line_len;
  long n_lines;
  int depth;              /* result slots */
  result *slots;
  int *ready;
  long next_take;         /* next line a worker takes */
  long next_write;        /* next line the writer consumes */
  int stop;
  pthread_mutex_t mu;
  pthread_cond_t cv_ready, cv_free;
  int init_failed;
  char init_msg[2048];
} pool;

static void *worker(void *arg) {
  pool *p = arg;
  vl_tokenizer *tk = NULL;
  vl_chat chat;
  vl_chat_tokens toks = {0};
  vl_err_set_quiet(1); /* this thread's errors become FILE:LINE messages */
  const prep_model *m = p->ctx.m;
  int ok = vl_tokenizer_load(&tk, m->tokenizer) == VL_OK &&
           vl_chat_init(&chat, tk, m->family, m->merge) == VL_OK;
  char why[2048] = "";
  /* the tokenizer must be the model's: its special ids and vocabulary */
  if (ok && (chat.image_pad != m->tokens.image_token_id || chat.vision_start != m->tokens.vision_start_token_id ||
             chat.vision_end != m->tokens.vision_end_token_id || vl_tokenizer_vocab_size(tk) > m->vocab_size)) {
    snprintf(why, sizeof why,
             "%s does not fit the model: <|image_pad|> %d, <|vision_start|> %d, <|vision_end|> %d, %d ids; the "
             "model has %d, %d, %d and a vocabulary of %d", m->tokenizer, chat.image_pad, chat.vision_start,
             chat.vision_end, vl_tokenizer_vocab_size(tk), m->tokens.image_token_id,
             m->tokens.vision_start_token_id, m->tokens.vision_end_token_id, m->vocab_size);
    ok = 0;
    vl_chat_free(&chat);
  } else if (!ok) {
    snprintf(why, sizeof why, "%s", vl_err_last());
  }
  pthread_mutex_lock(&p->mu);
  if (!ok) {
    p->init_failed = 1;
    snprintf(p->init_msg, sizeof p->init_msg, "%s", why);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_ready);
    pthread_mutex_unlock(&p->mu);
    if (tk) vl_tokenizer_free(tk);
    return NULL;
  }
  for (;;) {
    while (!p->stop && p->next_take < p->n_lines && p->next_take >= p->next_write + p->depth)
      pthread_cond_wait(&p->cv_free, &p->mu);
    if (p->stop || p->next_take >= p->n_lines) break;
    long i = p->next_take++;
    pthread_mutex_unlock(&p->mu);
    result r;
    process_line(&p->ctx, &chat, &toks, p->text + p->line_start[i], p->line_len[i], &r);
    pthread_mutex_lock(&p->mu);
    p->slots[i % p->depth] = r;
    p->ready[i % p->depth] = 1;
    pthread_cond_broadcast(&p->cv_ready);
  }
  pthread_mutex_unlock(&p->mu);
  vl_chat_tokens_free(&toks);
  vl_chat_free(&chat);
  vl_tokenizer_free(tk);
  return NULL;
}

/* ---- validation split: a seeded hash of the line number ------------------ */
static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* ---- progress --------------------------------------------------------------- */
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void progress(int tty, long done, long total, long written, double t0, int final) {
  double el = now_s() - t0, rate = el > 0 ? done / el : 0;
  if (tty) {
    int w = 30, fill = total ? (int)(w * done / total) : w;
    char bar[64];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    fprintf(stderr, "\rvlprep [%s] %3d%% %ld/%ld lines, %ld samples, %.1f/s ", bar,
            total ? (int)(100 * done / total) : 100, done, total, written, rate);
    if (final) fputc('\n', stderr);
  } else {
    fprintf(stderr, "vlprep: %ld/%ld lines, %ld samples written, %.1f lines/s, %.0f s\n", done, total,
            written, rate, el);
  }
  fflush(stderr);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: vlprep --model MODEL --input FILE.jsonl --output FILE.h5 [options]\n"
          "  --model MODEL        Hugging Face model folder or vltrain YAML config\n"
          "  --input FILE.jsonl   one record a line: {\"messages\": [...], \"images\": [...]}\n"
          "  --output FILE.h5     dataset file (written at FILE.h5.tmp.PID, renamed when complete)\n"
          "  --max-seq-len N      longest sample in tokens (default 2900)\n"
          "  --overlong POLICY    skip | truncate over-long samples (default skip)\n"
          "  --val-fraction F     put a fraction F of the lines in the /val split\n"
          "  --val-count N        put N lines in the /val split\n"
          "  --seed S             seed of the split's hash (default 0)\n"
          "  --threads N          worker threads (default: all cores)\n"
          "  --skip-bad           skip bad records (counted) instead of stopping\n"
          "  --pixels STORAGE     encoded (default): keep each image file's bytes, decoded\n"
          "                       and resized when training reads it (file about the size\n"
          "                       of the images); rgb: store the resized RGB pixels\n"
          "  --quiet              no progress output\n");
}

static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->max_seq_len = 2900;
  long nc = sysconf(_SC_NPROCESSORS_ONLN);
  o->threads = nc > 0 ? (int)nc : 1;
  o->val_count = -1;
  static const struct option lo[] = {
    {"model", 1, 0, 'm'}, {"input", 1, 0, 'i'}, {"output", 1, 0, 'o'}, {"max-seq-len", 1, 0, 'L'},
    {"overlong", 1, 0, 'P'}, {"val-fraction", 1, 0, 'F'}, {"val-count", 1, 0, 'C'},
    {"threads", 1, 0, 't'}, {"skip-bad", 0, 0, 'k'}, {"seed", 1, 0, 's'}, {"quiet", 0, 0, 'q'},
    {"pixels", 1, 0, 'X'},
    {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  int ch;
  char *endp;
  while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (ch) {
    case 'm': o->model = optarg; break;
    case 'X':
      if (!strcmp(optarg, "rgb")) o->rgb = 1;
      else if (strcmp(optarg, "encoded")) VL_ERROR(VL_EINVAL, "--pixels %s: expected encoded or rgb", optarg);
      break;
    case 'i': o->input = optarg; break;
    case 'o': o->output = optarg; break;
    case 'L':
      o->max_seq_len = (int)strtol(optarg, &endp, 10);
      if (*endp || o->max_seq_len < 8) VL_ERROR(VL_EINVAL, "--max-seq-len %s: expected an integer >= 8", optarg);
      break;
    case 'P':
      if (!strcmp(optarg, "skip")) o->truncate = 0;
      else if (!strcmp(optarg, "truncate")) o->truncate = 1;
      else VL_ERROR(VL_EINVAL, "--overlong %s: expected skip or truncate", optarg);
      break;
    case 'F':
      o->val_fraction = strtod(optarg, &endp);
      if (*endp || !(o->val_fraction >= 0 && o->val_fraction < 1))
        VL_ERROR(VL_EINVAL, "--val-fraction %s: expected a number in [0, 1)", optarg);
      break;
    case 'C':
      o->val_count = strtol(optarg, &endp, 10);
      if (*endp || o->val_count < 0) VL_ERROR(VL_EINVAL, "--val-count %s: expected an integer >= 0", optarg);
      break;
    case 't':
      o->threads = (int)strtol(optarg, &endp, 10);
      if (*endp || o->threads < 1 || o->threads > 1024) VL_ERROR(VL_EINVAL, "--threads %s: expected 1..1024", optarg);
      break;
    case 's': o->seed = strtoull(optarg, &endp, 10); if (*endp) VL_ERROR(VL_EINVAL, "--seed %s", optarg); break;
    case 'k': o->skip_bad = 1; break;
    case 'q': o->quiet = 1; break;
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); VL_ERROR(VL_EINVAL, "bad command line");
    }
  }
  if (optind < argc) VL_ERROR(VL_EINVAL, "unexpected argument: %s", argv[optind]);
  if (!o->model || !o->input || !o->output) {
    usage(stderr);
    VL_ERROR(VL_EINVAL, "--model, --input and --output are required");
  }
  if (o->val_fraction > 0 && o->val_count >= 0) VL_ERROR(VL_EINVAL, "give --val-fraction or --val-count, not both");
  return VL_OK;
}

/* ---- main --------------------------------------------------------------------- */
typedef struct {
  long read, written, val, bad, long_skipped, truncated, tokens, images;
  double bytes_in;
} tally;

static int run(const options *o) {
  prep_model m;
  VL_CALL(model_load(&m, o->model));
  vl_dataset_info info;
  memset(&info, 0, sizeof info);
  VL_CALL(vl_sha256_file(m.tokenizer, info.tokenizer_sha256));
  char *text;
  size_t len;
  VL_CALL(read_file(o->input, &text, &len));
  /* lines */
  long n_lines = 0, cap = 1024;
  size_t *ls = malloc((size_t)cap * sizeof *ls), *ll = malloc((size_t)cap * sizeof *ll);
  int rc = VL_OK;
  vl_dataset_writer *w = NULL;
  uint8_t *is_val = NULL;
  pool p;
  memset(&p, 0, sizeof p);
  pthread_t *th = NULL;
  int n_started = 0;
  if (!ls || !ll) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "line table");
  for (size_t s = 0; s < len;) {
    const char *nl = memchr(text + s, '\n', len - s);
    size_t e = nl ? (size_t)(nl - text) : len;
    if (n_lines == cap) {
      cap *= 2;
      size_t *a = realloc(ls, (size_t)cap * sizeof *ls), *b = a ? realloc(ll, (size_t)cap * sizeof *ll) : NULL;
      if (a) ls = a;
      if (b) ll = b;
      if (!a || !b) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "line table");
    }
    ls[n_lines] = s;
    ll[n_lines++] = e - s;
    s = e + 1;
  }
  long nonblank = 0;
  for (long i = 0; i < n_lines; i++) {
    size_t k = 0;
    while (k < ll[i] && strchr(" \t\r", text[ls[i] + k])) k++;
    nonblank += k < ll[i];
  }
  if (!nonblank) {
    fprintf(stderr, "%s:1: empty input: no records\n", o->input);
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: empty input", o->input);
  }
  /* the split */
  is_val = calloc((size_t)n_lines + 1, 1);
  if (!is_val) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "split table");
  if (o->val_fraction > 0) {
    for (long i = 0; i < n_lines; i++)
      is_val[i] = (double)(mix64(o->seed ^ mix64((uint64_t)i + 1)) >> 11) * 0x1.0p-53 < o->val_fraction;
  } else if (o->val_count > 0) {
    uint64_t *h = malloc((size_t)n_lines * sizeof *h);
    if (!h) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "split table");
    long nh = 0;
    /* the val_count non-blank lines of smallest hash: (24 hash bits, line) packed */
    for (long i = 0; i < n_lines; i++) {
      size_t k = 0;
      while (k < ll[i] && strchr(" \t\r", text[ls[i] + k])) k++;
      if (k < ll[i]) h[nh++] = (mix64(o->seed ^ mix64((uint64_t)i + 1)) << 40) | (uint64_t)i;
    }
    if (n_lines >= (1L << 40)) { free(h); VL_ERROR_GOTO(rc, done, VL_EINVAL, "too many lines"); }
    qsort(h, (size_t)nh, sizeof *h, cmp_u64);
    for (long k = 0; k < nh && k < o->val_count; k++) is_val[h[k] & ((1ull << 40) - 1)] = 1;
    free(h);
  }
  char *dcopy = strdup(o->input);
  char dir[VL_PATH_MAX];
  snprintf(dir, sizeof dir, "%s", dcopy ? dirname(dcopy) : ".");
  free(dcopy);
  /* the writer's temporary name (dataset.h): removed if we are interrupted */
  snprintf(tmp_path, sizeof tmp_path, "%s.tmp.%ld", o->output, (long)getpid());
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  VL_CALL_GOTO(rc, done, vl_dataset_writer_open(&w, o->output));
  /* workers */
  p.ctx.opt = o;
  p.ctx.m = &m;
  p.ctx.dir = dir;
  p.text = text;
  p.line_start = ls;
  p.line_len = ll;
  p.n_lines = n_lines;
  p.depth = 2 * o->threads + 2;
  p.slots = calloc((size_t)p.depth, sizeof *p.slots);
  p.ready = calloc((size_t)p.depth, sizeof *p.ready);
  th = calloc((size_t)o->threads, sizeof *th);
  if (!p.slots || !p.ready || !th) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "worker pool");
  pthread_mutex_init(&p.mu, NULL);
  pthread_cond_init(&p.cv_ready, NULL);
  pthread_cond_init(&p.cv_free, NULL);
  for (; n_started < o->threads; n_started++)
    if (pthread_create(&th[n_started], NULL, worker, &p) != 0) break;
  if (!n_started) { VL_ERROR_GOTO(rc, done, VL_ENOMEM, "cannot start worker threads"); }
  tally t;
  memset(&t, 0, sizeof t);
  int tty = isatty(2) && !o->quiet;
  double t0 = now_s(), last = t0;
  for (long i = 0; i < n_lines; i++) {
    pthread_mutex_lock(&p.mu);
    while (!p.ready[i % p.depth] && !p.init_failed) pthread_cond_wait(&p.cv_ready, &p.mu);
    if (p.init_failed) {
      pthread_mutex_unlock(&p.mu);
      VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s", p.init_msg);
    }
    result r = p.slots[i % p.depth];
    p.ready[i % p.depth] = 0;
    p.next_write = i + 1;
    pthread_cond_broadcast(&p.cv_free);
    pthread_mutex_unlock(&p.mu);
    if (r.status != REC_BLANK) t.read++;
    t.bytes_in += (double)r.bytes_in;
    if (r.status == REC_FATAL) {
      VL_ERROR_GOTO(rc, done, VL_ENOMEM, "%s:%ld: %s", o->input, i + 1, r.msg);
    } else if (r.status == REC_BAD) {
      if (tty) fputc('\n', stderr);
      fprintf(stderr, "%s:%ld: %s\n", o->input, i + 1, r.msg);
      t.bad++;
      if (!o->skip_bad) {
        VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%ld: bad record (use --skip-bad to skip such records)", o->input, i + 1);
      }
    } else if (r.status == REC_LONG) {
      t.long_skipped++;
    } else if (r.status == REC_OK) {
      vl_dataset_image im[64], *imp = r.n_images <= 64 ? im : malloc((size_t)r.n_images * sizeof *imp);
      if (!imp) { result_free(&r); VL_ERROR_GOTO(rc, done, VL_ENOMEM, "image list"); }
      for (int k = 0; k < r.n_images; k++) {
        imp[k].h = r.images[k].h;
        imp[k].w = r.images[k].w;
        imp[k].rgb = r.images[k].rgb;
        imp[k].encoded = r.encoded[k];
        imp[k].n_encoded = r.n_encoded[k];
        memcpy(imp[k].grid_thw, r.grids[k], sizeof imp[k].grid_thw);
      }
      rc = vl_dataset_writer_add(w, is_val[i] ? "val" : "train", r.ids, r.mask, r.n_tokens, imp, r.n_images);
      if (imp != im) free(imp);
      if (rc) { result_free(&r); vl_err_trace(rc, __FILE__, __LINE__, __func__); goto done; }
      t.written++;
      t.val += is_val[i];
      t.truncated += r.truncated;
      t.tokens += r.n_tokens;
      t.images += r.n_images;
    }
    result_free(&r);
    double nw = now_s();
    if (!o->quiet && nw - last > (tty ? 0.2 : 10.0)) {
      progress(tty, i + 1, n_lines, t.written, t0, 0);
      last = nw;
    }
  }
  if (!o->quiet) progress(tty, n_lines, n_lines, t.written, t0, 1);
  if (!t.written) VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: no sample left to write (%ld bad, %ld too long)", o->input, t.bad, t.long_skipped);
  info.family = m.family;
  info.vocab_size = m.vocab_size;
  info.image_token_id = m.tokens.image_token_id;
  info.vision_start_token_id = m.tokens.vision_start_token_id;
  info.vision_end_token_id = m.tokens.vision_end_token_id;
  info.patch_size = m.patch;
  info.temporal_patch_size = m.temporal;
  info.merge_size = m.merge;
  info.min_pixels = m.min_pixels;
  info.max_pixels = m.max_pixels;
  memcpy(info.image_mean, m.mean, sizeof m.mean);
  memcpy(info.image_std, m.std, sizeof m.std);
  info.max_seq_len = o->max_seq_len;
  snprintf(info.truncation, sizeof info.truncation, "%s", o->truncate ? "truncate" : "skip");
  snprintf(info.source, sizeof info.source, "%s", o->input);
  info.n_read = t.read;
  info.n_written = t.written;
  info.n_skipped_bad = t.bad;
  info.n_skipped_long = t.long_skipped;
  info.n_truncated = t.truncated;
  VL_CALL_GOTO(rc, done, vl_dataset_writer_commit(w, &info));
  w = NULL;
  tmp_path[0] = 0;
  double el = now_s() - t0;
  struct stat st;
  double out_mb = stat(o->output, &st) == 0 ? st.st_size / 1e6 : 0, in_mb = (t.bytes_in + (double)len) / 1e6;
  printf("vlprep: %s -> %s\n"
         "  records %ld: written %ld (train %ld, val %ld), skipped bad %ld, skipped too long %ld, truncated %ld\n"
         "  tokens %ld, images %ld; input %.1f MB (JSONL + images), output %.1f MB (ratio %.2f)\n"
         "  %.2f s, %.1f samples/s, %d threads\n",
         o->input, o->output, t.read, t.written, t.written - t.val, t.val, t.bad, t.long_skipped,
         t.truncated, t.tokens, t.images, in_mb, out_mb, in_mb > 0 ? out_mb / in_mb : 0, el,
         el > 0 ? t.written / el : 0, o->threads);
done:
  if (n_started) {
    pthread_mutex_lock(&p.mu);
    p.stop = 1;
    pthread_cond_broadcast(&p.cv_free);
    pthread_mutex_unlock(&p.mu);
    for (int k = 0; k < n_started; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < p.depth; k++)
      if (p.ready[k]) result_free(&p.slots[k]);
  }
  if (w) vl_dataset_writer_abort(w);
  free(th);
  free(p.slots);
  free(p.ready);
  free(is_val);
  free(ls);
  free(ll);
  free(text);
  return rc;
}

int main(int argc, char **argv) {
  options o;
  if (parse_args(argc, argv, &o) != VL_OK) return 2;
  return run(&o) == VL_OK ? 0 : 1;
}
