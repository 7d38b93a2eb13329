/* hfconfig: config.json <-> vltrain model keys (see hfconfig.h). */
#include "hfconfig.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

typedef struct {
  const char *name;     /* file, for messages */
  cJSON *root, *text, *vision;
  const char *text_prefix; /* "text_config." or "" */
  vl_hf_kv *kv;
  int n;
} parse_state;

/* Looks `key` up in obj, then in the fallback object; *where names it. */
static cJSON *lookup(cJSON *obj, const char *obj_prefix, cJSON *fallback, const char *key,
                     char *where, size_t n) {
  cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
  if (it && !cJSON_IsNull(it)) {
    snprintf(where, n, "%s%s", obj_prefix, key);
    return it;
  }
  it = fallback ? cJSON_GetObjectItemCaseSensitive(fallback, key) : NULL;
  if (it && !cJSON_IsNull(it)) {
    snprintf(where, n, "%s", key);
    return it;
  }
  snprintf(where, n, "%s%s", obj_prefix, key);
  return NULL;
}

static int add(parse_state *s, const char *key, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int add(parse_state *s, const char *key, const char *where, const char *fmt, ...) {
  if (s->n >= VL_HF_MAX_KEYS) VL_ERROR(VL_EINVAL, "%s: too many keys", s->name);
  vl_hf_kv *e = &s->kv[s->n++];
  e->key = key;
  snprintf(e->source, sizeof e->source, "%s", where);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->value, sizeof e->value, fmt, ap);
  va_end(ap);
  return VL_OK;
}

/* An integer-valued number (1e6 written as 1000000.0 is fine). */
static int get_int(parse_state *s, cJSON *it, const char *where, long long *v) {
  if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
      fabs(it->valuedouble) > 9e15)
    VL_ERROR(VL_EINVAL, "%s: %s: expected an integer", s->name, where);
  *v = (long long)it->valuedouble;
  return VL_OK;
}

/* Integer key: from obj (or fallback); required unless def_ok. */
static int put_int(parse_state *s, const char *key, cJSON *obj, const char *prefix,
                   cJSON *fallback, const char *hf, int required) {
  char where[64];
  cJSON *it = lookup(obj, prefix, fallback, hf, where, sizeof where);
  if (!it) {
    if (required) VL_ERROR(VL_EINVAL, "%s: %s: required key missing", s->name, where);
    return VL_OK;
  }
  long long v;
  VL_CALL(get_int(s, it, where, &v));
  return add(s, key, where, "%lld", v);
}

static int put_double(parse_state *s, const char *key, cJSON *it, const char *where) {
  if (!cJSON_IsNumber(it)) VL_ERROR(VL_EINVAL, "%s: %s: expected a number", s->name, where);
  /* %.17g round-trips; YAML/config.c want no "inf"/"nan" */
  char buf[64];
  snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
  return add(s, key, where, "%s", buf);
}

static int put_bool(parse_state *s, const char *key, cJSON *it, const char *where) {
  if (!cJSON_IsBool(it)) VL_ERROR(VL_EINVAL, "%s: %s: expected true or false", s->name, where);
  return add(s, key, where, "%s", cJSON_IsTrue(it) ? "true" : "false");
}

static int put_act(parse_state *s, const char *key, cJSON *it, const char *where) {
  static const char *const ok[] = {"gelu_pytorch_tanh", "gelu", "quick_gelu", "silu", NULL};
  if (!cJSON_IsString(it)) VL_ERROR(VL_EINVAL, "%s: %s: expected an activation name", s->name, where);
  for (int i = 0; ok[i]; i++)
    if (!strcmp(it->valuestring, ok[i])) return add(s, key, where, "%s", ok[i]);
  VL_ERROR(VL_EINVAL, "%s: %s: activation '%s' is not supported (gelu_pytorch_tanh, gelu, "
           "quick_gelu, silu)", s->name, where, it->valuestring);
}

static int put_list(parse_state *s, const char *key, cJSON *it, const char *where, int max) {
  if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) > max)
    VL_ERROR(VL_EINVAL, "%s: %s: expected a list of at most %d integers", s->name, where, max);
  char buf[96];
  size_t o = (size_t)snprintf(buf, sizeof buf, "[");
  int i = 0;
  for (cJSON *e = it->child; e; e = e->next, i++) {
    long long v;
    VL_CALL(get_int(s, e, where, &v));
    o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%lld", i ? ", " : "", v);
  }
  snprintf(buf + o, sizeof buf - o, "]");
  return add(s, key, where, "%s", buf);
}

/* The rope block: transformers 5's rope_parameters, else rope_scaling;
 * looked up in the text config, then the top level. */
static cJSON *rope_block(parse_state *s, char *where, size_t n) {
  cJSON *r = lookup(s->text, s->text_prefix, s->root, "rope_parameters", where, n);
  if (!r) r = lookup(s->text, s->text_prefix, s->root, "rope_scaling", where, n);
  return cJSON_IsObject(r) ? r : NULL;
}

static int parse_rope(parse_state *s, int qwen3) {
  char rw[64], where[96];
  cJSON *rope = rope_block(s, rw, sizeof rw);
  if (!rope) VL_ERROR(VL_EINVAL, "%s: %s: required key missing (rope_scaling or rope_parameters "
                      "with mrope_section)", s->name, rw);
  cJSON *it = cJSON_GetObjectItemCaseSensitive(rope, "mrope_section");
  snprintf(where, sizeof where, "%s.mrope_section", rw);
  if (!it) VL_ERROR(VL_EINVAL, "%s: %s: required key missing", s->name, where);
  VL_CALL(put_list(s, "model.text.mrope_section", it, where, 3));
  it = cJSON_GetObjectItemCaseSensitive(rope, "mrope_interleaved");
  snprintf(where, sizeof where, "%s.mrope_interleaved", rw);
  if (it) VL_CALL(put_bool(s, "model.text.mrope_interleaved", it, where));
  else VL_CALL(add(s, "model.text.mrope_interleaved", "model_type", qwen3 ? "true" : "false"));
  char tw[96];
  it = lookup(s->text, s->text_prefix, s->root, "rope_theta", tw, sizeof tw);
  if (!it) {
    it = cJSON_GetObjectItemCaseSensitive(rope, "rope_theta");
    snprintf(tw, sizeof tw, "%s.rope_theta", rw);
  }
  if (it) VL_CALL(put_double(s, "model.text.rope_theta", it, tw));
  else VL_CALL(add(s, "model.text.rope_theta", "default", qwen3 ? "5000000" : "1000000"));
  return VL_OK;
}

static int parse_text(parse_state *s, int qwen3) {
  cJSON *t = s->text, *r = s->root;
  const char *p = s->text_prefix;
  VL_CALL(put_int(s, "model.text.vocab_size", t, p, r, "vocab_size", 1));
  VL_CALL(put_int(s, "model.text.hidden_size", t, p, r, "hidden_size", 1));
  VL_CALL(put_int(s, "model.text.intermediate_size", t, p, r, "intermediate_size", 1));
  VL_CALL(put_int(s, "model.text.num_hidden_layers", t, p, r, "num_hidden_layers", 1));
  VL_CALL(put_int(s, "model.text.num_attention_heads", t, p, r, "num_attention_heads", 1));
  VL_CALL(put_int(s, "model.text.num_key_value_heads", t, p, r, "num_key_value_heads", 1));
  char where[64];
  cJSON *hd = lookup(t, p, r, "head_dim", where, sizeof where);
  if (hd) {
    VL_CALL(put_int(s, "model.text.head_dim", t, p, r, "head_dim", 1));
  } else { /* Qwen2-VL: hidden_size / num_attention_heads */
    char w1[64], w2[64];
    long long h, nh;
    VL_CALL(get_int(s, lookup(t, p, r, "hidden_size", w1, sizeof w1), w1, &h));
    VL_CALL(get_int(s, lookup(t, p, r, "num_attention_heads", w2, sizeof w2), w2, &nh));
    if (nh <= 0 || h % nh)
      VL_ERROR(VL_EINVAL, "%s: %s %lld is not a multiple of %s %lld (no head_dim given)",
               s->name, w1, h, w2, nh);
    VL_CALL(add(s, "model.text.head_dim", "hidden_size/num_attention_heads", "%lld", h / nh));
  }
  cJSON *it = lookup(t, p, r, "rms_norm_eps", where, sizeof where);
  if (it) VL_CALL(put_double(s, "model.text.rms_norm_eps", it, where));
  VL_CALL(parse_rope(s, qwen3));
  if (qwen3) {
    it = lookup(t, p, r, "attention_bias", where, sizeof where);
    if (it) VL_CALL(put_bool(s, "model.text.attention_bias", it, where));
    else VL_CALL(add(s, "model.text.attention_bias", "default", "false"));
  } else { /* Qwen2-VL's q/k/v projections always have biases */
    VL_CALL(add(s, "model.text.attention_bias", "model_type", "true"));
  }
  /* tie_word_embeddings: the top level is what transformers ties by */
  it = lookup(r, "", t, "tie_word_embeddings", where, sizeof where);
  if (it) VL_CALL(put_bool(s, "model.text.tie_word_embeddings", it, where));
  else VL_CALL(add(s, "model.text.tie_word_embeddings", "default", "false"));
  it = lookup(t, p, r, "hidden_act", where, sizeof where);
  if (it) VL_CALL(put_act(s, "model.text.hidden_act", it, where));
  else VL_CALL(add(s, "model.text.hidden_act", "default", "silu"));
  static const char *const tok[] = {"image_token_id", "video_token_id", "vision_start_token_id",
                                    "vision_end_token_id"};
  static const char *const tkey[] = {"model.tokens.image_token_id", "model.tokens.video_token_id",
                                     "model.tokens.vision_start_token_id",
                                     "model.tokens.vision_end_token_id"};
  for (int i = 0; i < 4; i++) VL_CALL(put_int(s, tkey[i], r, "", t, tok[i], 1));
  return VL_OK;
}

static int parse_vision(parse_state *s, int qwen3) {
  cJSON *v = s->vision;
  const char *p = "vision_config.";
  char where[64];
  cJSON *it;
  VL_CALL(put_int(s, "model.vision.depth", v, p, NULL, "depth", 1));
  VL_CALL(put_int(s, "model.vision.num_heads", v, p, NULL, "num_heads", 1));
  VL_CALL(put_int(s, "model.vision.spatial_merge_size", v, p, NULL, "spatial_merge_size", 1));
  VL_CALL(put_int(s, "model.vision.temporal_patch_size", v, p, NULL, "temporal_patch_size", 0));
  if (qwen3) {
    VL_CALL(put_int(s, "model.vision.hidden_size", v, p, NULL, "hidden_size", 1));
    VL_CALL(put_int(s, "model.vision.intermediate_size", v, p, NULL, "intermediate_size", 1));
    VL_CALL(put_int(s, "model.vision.out_hidden_size", v, p, NULL, "out_hidden_size", 1));
    VL_CALL(put_int(s, "model.vision.patch_size", v, p, NULL, "patch_size", 1));
    VL_CALL(put_int(s, "model.vision.in_channels", v, p, NULL, "in_channels", 0));
    VL_CALL(put_int(s, "model.vision.num_position_embeddings", v, p, NULL,
                    "num_position_embeddings", 1));
    it = lookup(v, p, NULL, "deepstack_visual_indexes", where, sizeof where);
    if (it) VL_CALL(put_list(s, "model.vision.deepstack_visual_indexes", it, where, VL_MAX_DEEPSTACK));
    else VL_CALL(add(s, "model.vision.deepstack_visual_indexes", "default", "[]"));
  } else {
    /* embed_dim is the ViT width; hidden_size the merger's output */
    char w[64];
    long long ed;
    it = lookup(v, p, NULL, "embed_dim", w, sizeof w);
    if (!it) VL_ERROR(VL_EINVAL, "%s: %s: required key missing", s->name, w);
    VL_CALL(get_int(s, it, w, &ed));
    VL_CALL(add(s, "model.vision.hidden_size", w, "%lld", ed));
    it = lookup(v, p, NULL, "mlp_ratio", w, sizeof w);
    double ratio = 4.0;
    if (it) {
      if (!cJSON_IsNumber(it)) VL_ERROR(VL_EINVAL, "%s: %s: expected a number", s->name, w);
      ratio = it->valuedouble;
    }
    double inter = ratio * (double)ed;
    if (inter != floor(inter) || inter < 1)
      VL_ERROR(VL_EINVAL, "%s: %s %g x embed_dim %lld is not a whole MLP width", s->name, w,
               ratio, ed);
    VL_CALL(add(s, "model.vision.intermediate_size", "vision_config.mlp_ratio*embed_dim", "%.0f", inter));
    VL_CALL(put_int(s, "model.vision.out_hidden_size", v, p, NULL, "hidden_size", 1));
    it = lookup(v, p, NULL, "patch_size", w, sizeof w);
    if (!it) it = lookup(v, p, NULL, "spatial_patch_size", w, sizeof w);
    if (!it) VL_ERROR(VL_EINVAL, "%s: vision_config.patch_size: required key missing", s->name);
    long long ps;
    VL_CALL(get_int(s, it, w, &ps));
    VL_CALL(add(s, "model.vision.patch_size", w, "%lld", ps));
    it = lookup(v, p, NULL, "in_chans", w, sizeof w);
    if (!it) it = lookup(v, p, NULL, "in_channels", w, sizeof w);
    if (it) {
      long long ic;
      VL_CALL(get_int(s, it, w, &ic));
      VL_CALL(add(s, "model.vision.in_channels", w, "%lld", ic));
    }
    VL_CALL(add(s, "model.vision.num_position_embeddings", "model_type", "0"));
    VL_CALL(add(s, "model.vision.deepstack_visual_indexes", "model_type", "[]"));
  }
  it = lookup(v, p, NULL, "hidden_act", where, sizeof where);
  if (it) VL_CALL(put_act(s, "model.vision.hidden_act", it, where));
  else VL_CALL(add(s, "model.vision.hidden_act", "default", qwen3 ? "gelu_pytorch_tanh" : "quick_gelu"));
  return VL_OK;
}

int vl_hfconfig_parse(const char *json, const char *name, vl_hf_kv *kv, int *n) {
  *n = 0;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
  if (!root) {
    size_t off = end ? (size_t)(end - json) : 0;
    VL_ERROR(VL_EINVAL, "%s: not valid JSON (near byte %zu)", name, off);
  }
  parse_state s = {.name = name, .root = root, .kv = kv};
  int rc = VL_OK;
  if (!cJSON_IsObject(root)) VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: expected a JSON object", name);
  cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  if (!cJSON_IsString(mt))
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: model_type: required key missing (a string)", name);
  int qwen3;
  if (!strcmp(mt->valuestring, "qwen3_vl")) qwen3 = 1;
  else if (!strcmp(mt->valuestring, "qwen2_vl")) qwen3 = 0;
  else
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: model_type: '%s' is not supported (qwen3_vl, qwen2_vl)",
                  name, mt->valuestring);
  VL_CALL_GOTO(rc, done, add(&s, "model.family", "model_type", "%s", qwen3 ? "qwen3-vl" : "qwen2-vl"));
  s.text = cJSON_GetObjectItemCaseSensitive(root, "text_config");
  if (s.text && !cJSON_IsObject(s.text))
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: text_config: expected an object", name);
  if (qwen3 && !s.text)
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: text_config: required key missing (qwen3_vl)", name);
  s.text_prefix = s.text ? "text_config." : "";
  s.vision = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
  if (!cJSON_IsObject(s.vision))
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: vision_config: required key missing (an object)", name);
  VL_CALL_GOTO(rc, done, parse_text(&s, qwen3));
  VL_CALL_GOTO(rc, done, parse_vision(&s, qwen3));
  *n = s.n;
done:
  cJSON_Delete(root);
  return rc;
}

int vl_hfconfig_read_file(const char *dir, char **text, char *path, size_t path_n) {
  snprintf(path, path_n, "%s/config.json", dir);
  FILE *f = fopen(path, "rb");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot open: %s", path, strerror(errno));
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4096 + 1 > cap) {
      cap = cap ? 2 * cap : 16384;
      char *nb = realloc(buf, cap);
      if (!nb) { free(buf); fclose(f); VL_ERROR(VL_ENOMEM, "%s: out of memory", path); }
      buf = nb;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (!r) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) { free(buf); VL_ERROR(VL_EIO, "%s: read error", path); }
  buf[n] = '\0';
  *text = buf;
  return VL_OK;
}

/* ---- writing ------------------------------------------------------------------ */

static cJSON *int_array(const int *v, int n) {
  cJSON *a = cJSON_CreateArray();
  for (int i = 0; a && i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
  return a;
}

int vl_hfconfig_write(const vl_model_config *mc, const char *dtype, char **out) {
  const vl_text_config *t = &mc->text;
  const vl_vision_config *v = &mc->vision;
  const vl_token_config *k = &mc->tokens;
  const int q3 = mc->family == VL_FAMILY_QWEN3_VL;
  cJSON *root = cJSON_CreateObject();
  if (!root) VL_ERROR(VL_ENOMEM, "config.json: out of memory");
  cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
  cJSON_AddItemToArray(arch, cJSON_CreateString(q3 ? "Qwen3VLForConditionalGeneration"
                                                   : "Qwen2VLForConditionalGeneration"));
  cJSON_AddStringToObject(root, "model_type", q3 ? "qwen3_vl" : "qwen2_vl");
  cJSON_AddNumberToObject(root, "image_token_id", k->image_token_id);
  cJSON_AddNumberToObject(root, "video_token_id", k->video_token_id);
  cJSON_AddNumberToObject(root, "vision_start_token_id", k->vision_start_token_id);
  cJSON_AddNumberToObject(root, "vision_end_token_id", k->vision_end_token_id);
  cJSON_AddBoolToObject(root, "tie_word_embeddings", t->tie_word_embeddings);
  cJSON_AddStringToObject(root, "torch_dtype", dtype);
  /* the text keys: nested for qwen3_vl, at the top for qwen2_vl */
  cJSON *tc = q3 ? cJSON_AddObjectToObject(root, "text_config") : root;
  if (q3) {
    cJSON_AddStringToObject(tc, "model_type", "qwen3_vl_text");
    cJSON_AddBoolToObject(tc, "attention_bias", t->attention_bias);
    cJSON_AddNumberToObject(tc, "head_dim", t->head_dim);
    cJSON_AddBoolToObject(tc, "tie_word_embeddings", t->tie_word_embeddings);
  }
  cJSON_AddNumberToObject(tc, "vocab_size", t->vocab_size);
  cJSON_AddNumberToObject(tc, "hidden_size", t->hidden_size);
  cJSON_AddNumberToObject(tc, "intermediate_size", t->intermediate_size);
  cJSON_AddNumberToObject(tc, "num_hidden_layers", t->num_hidden_layers);
  cJSON_AddNumberToObject(tc, "num_attention_heads", t->num_attention_heads);
  cJSON_AddNumberToObject(tc, "num_key_value_heads", t->num_key_value_heads);
  cJSON_AddNumberToObject(tc, "rms_norm_eps", t->rms_norm_eps);
  cJSON_AddNumberToObject(tc, "rope_theta", t->rope_theta);
  cJSON_AddStringToObject(tc, "hidden_act", vl_act_name(t->hidden_act));
  cJSON_AddNumberToObject(tc, "initializer_range", 0.02);
  cJSON_AddBoolToObject(tc, "use_cache", 1);
  cJSON *rs = cJSON_AddObjectToObject(tc, "rope_scaling");
  if (q3) {
    cJSON_AddBoolToObject(rs, "mrope_interleaved", t->mrope_interleaved);
    cJSON_AddStringToObject(rs, "rope_type", "default");
  } else {
    cJSON_AddStringToObject(rs, "type", "mrope");
  }
  cJSON_AddItemToObject(rs, "mrope_section", int_array(t->mrope_section, 3));
  cJSON *vc = cJSON_AddObjectToObject(root, "vision_config");
  cJSON_AddNumberToObject(vc, "depth", v->depth);
  cJSON_AddNumberToObject(vc, "num_heads", v->num_heads);
  cJSON_AddStringToObject(vc, "hidden_act", vl_act_name(v->hidden_act));
  cJSON_AddNumberToObject(vc, "patch_size", v->patch_size);
  cJSON_AddNumberToObject(vc, "temporal_patch_size", v->temporal_patch_size);
  cJSON_AddNumberToObject(vc, "spatial_merge_size", v->spatial_merge_size);
  if (q3) {
    cJSON_AddStringToObject(vc, "model_type", "qwen3_vl");
    cJSON_AddNumberToObject(vc, "hidden_size", v->hidden_size);
    cJSON_AddNumberToObject(vc, "intermediate_size", v->intermediate_size);
    cJSON_AddNumberToObject(vc, "in_channels", v->in_channels);
    cJSON_AddNumberToObject(vc, "out_hidden_size", v->out_hidden_size);
    cJSON_AddNumberToObject(vc, "num_position_embeddings", v->num_position_embeddings);
    cJSON_AddItemToObject(vc, "deepstack_visual_indexes",
                          int_array(v->deepstack_visual_indexes, v->n_deepstack));
    cJSON_AddNumberToObject(vc, "initializer_range", 0.02);
  } else {
    cJSON_AddNumberToObject(vc, "embed_dim", v->hidden_size);
    cJSON_AddNumberToObject(vc, "mlp_ratio", (double)v->intermediate_size / v->hidden_size);
    cJSON_AddNumberToObject(vc, "in_chans", v->in_channels);
    cJSON_AddNumberToObject(vc, "hidden_size", v->out_hidden_size);
    cJSON_AddNumberToObject(vc, "spatial_patch_size", v->patch_size);
  }
  char *s = cJSON_Print(root);
  cJSON_Delete(root);
  if (!s) VL_ERROR(VL_ENOMEM, "config.json: out of memory");
  *out = s;
  return VL_OK;
}
