/* demo: scenes, questions and drawing of the demo task (see demo.h). */
#include "demo.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

static const char *const colour_names[VL_DEMO_N_COLOURS] = {"green", "blue", "yellow", "black"};
static const float colour_rgb[VL_DEMO_N_COLOURS][3] = {
    {60, 200, 80}, {50, 100, 235}, {245, 220, 50}, {38, 38, 44}};
static const char *const shape_names[VL_DEMO_N_SHAPES] = {"bar", "clip", "ring"};
static const char *const count_words[4] = {"zero", "one", "two", "three"};

const char *vl_demo_colour_name(int c) { return c >= 0 && c < VL_DEMO_N_COLOURS ? colour_names[c] : "?"; }
const char *vl_demo_shape_name(int s) { return s >= 0 && s < VL_DEMO_N_SHAPES ? shape_names[s] : "?"; }

/* ---- seeded randomness (splitmix64) -------------------------------------- */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
typedef struct { uint64_t s; } rng;
static uint64_t rng_next(rng *r) { return mix64(r->s += 0x9e3779b97f4a7c15ull); }
static int rng_below(rng *r, int n) { return (int)(rng_next(r) % (uint64_t)n); }
static float rng_unit(rng *r) { return (float)(rng_next(r) >> 40) * (1.0f / 16777216.0f); }
static rng rng_for(uint64_t seed, uint64_t index, uint64_t stream) {
  rng r = {mix64(mix64(seed ^ 0x5ca1ab1eull) ^ (index * 0x9e3779b97f4a7c15ull) ^ stream)};
  return r;
}
static void shuffle(rng *r, int *a, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = rng_below(r, i + 1), t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

/* ---- scenes and questions -------------------------------------------------- */
void vl_demo_scene_make(vl_demo_scene *s, uint64_t seed, uint64_t index) {
  memset(s, 0, sizeof *s);
  rng r = rng_for(seed, index, 1);
  int quad[4] = {0, 1, 2, 3}, col[VL_DEMO_N_COLOURS] = {0, 1, 2, 3};
  shuffle(&r, quad, 4);
  shuffle(&r, col, VL_DEMO_N_COLOURS);
  s->n = 1 + rng_below(&r, VL_DEMO_MAX_INSTRUMENTS);
  for (int i = 0; i < s->n; i++) {
    vl_demo_instrument *in = &s->inst[i];
    in->quadrant = quad[i];
    in->colour = col[i];
    in->shape = rng_below(&r, VL_DEMO_N_SHAPES);
    in->dx = (rng_unit(&r) * 2 - 1) * 0.03f;
    in->dy = (rng_unit(&r) * 2 - 1) * 0.03f;
    in->angle = rng_unit(&r) * 3.14159265f;
  }
  int phrasing = rng_below(&r, 2);
  s->qtype = rng_below(&r, VL_DEMO_N_QTYPES);
  if (s->qtype == VL_DEMO_Q_COLOUR) {
    /* the colour of the only instrument, or of the one alone on its side */
    int on_side[2] = {0, 0}, which[2] = {-1, -1};
    for (int i = 0; i < s->n; i++) {
      int side = s->inst[i].quadrant & 1;
      on_side[side]++;
      which[side] = i;
    }
    int cand[2], nc = 0;
    for (int side = 0; side < 2; side++)
      if (on_side[side] == 1) cand[nc++] = side;
    if (s->n == 1) {
      s->n_classes = VL_DEMO_N_COLOURS;
      snprintf(s->answer_word, sizeof s->answer_word, "%s", colour_names[s->inst[0].colour]);
      snprintf(s->question, sizeof s->question, "%s",
               phrasing ? "What colour is the instrument?" : "Which colour does the instrument have?");
      snprintf(s->answer, sizeof s->answer, "Looking at its colour. %s", s->answer_word);
    } else if (nc > 0) {
      int side = cand[rng_below(&r, nc)];
      const char *sn = side ? "right" : "left";
      s->n_classes = VL_DEMO_N_COLOURS;
      snprintf(s->answer_word, sizeof s->answer_word, "%s", colour_names[s->inst[which[side]].colour]);
      if (phrasing)
        snprintf(s->question, sizeof s->question, "What colour is the instrument on the %s?", sn);
      else
        snprintf(s->question, sizeof s->question, "Which colour does the instrument on the %s have?", sn);
      snprintf(s->answer, sizeof s->answer, "Looking at its colour. %s", s->answer_word);
    } else {
      s->qtype = VL_DEMO_Q_SIDE; /* two instruments on one side: ask where one is */
    }
  }
  if (s->qtype == VL_DEMO_Q_COUNT) {
    s->n_classes = VL_DEMO_MAX_INSTRUMENTS;
    snprintf(s->answer_word, sizeof s->answer_word, "%s", count_words[s->n]);
    snprintf(s->question, sizeof s->question, "%s",
             phrasing ? "How many instruments are in the image?" : "How many instruments can you see?");
    snprintf(s->answer, sizeof s->answer, "Counting the instruments in view. %s", s->answer_word);
  } else if (s->qtype == VL_DEMO_Q_SIDE) {
    const vl_demo_instrument *in = &s->inst[rng_below(&r, s->n)];
    const char *cn = colour_names[in->colour];
    s->n_classes = 2;
    snprintf(s->answer_word, sizeof s->answer_word, "%s", (in->quadrant & 1) ? "right" : "left");
    if (phrasing)
      snprintf(s->question, sizeof s->question, "On which side is the %s instrument?", cn);
    else
      snprintf(s->question, sizeof s->question, "Is the %s instrument on the left or on the right?", cn);
    snprintf(s->answer, sizeof s->answer, "Finding the instrument. %s", s->answer_word);
  }
}

/* ---- drawing ------------------------------------------------------------------ */
static float lattice(uint64_t key, int ix, int iy) {
  uint64_t h = mix64(key ^ ((uint64_t)(uint32_t)ix * 0x9e3779b97f4a7c15ull) ^
                     ((uint64_t)(uint32_t)iy * 0xc2b2ae3d27d4eb4full));
  return (float)(h >> 40) * (1.0f / 16777216.0f);
}

/* smooth value noise in [0, 1] with cells of `cell` pixels */
static float value_noise(uint64_t key, float x, float y, float cell) {
  float fx = x / cell, fy = y / cell;
  int ix = (int)floorf(fx), iy = (int)floorf(fy);
  float tx = fx - (float)ix, ty = fy - (float)iy;
  tx = tx * tx * (3 - 2 * tx);
  ty = ty * ty * (3 - 2 * ty);
  float a = lattice(key, ix, iy), b = lattice(key, ix + 1, iy);
  float c = lattice(key, ix, iy + 1), d = lattice(key, ix + 1, iy + 1);
  return (a + (b - a) * tx) + ((c + (d - c) * tx) - (a + (b - a) * tx)) * ty;
}

/* distance from p to segment a-b */
static float seg_dist(float px, float py, float ax, float ay, float bx, float by) {
  float vx = bx - ax, vy = by - ay, wx = px - ax, wy = py - ay;
  float t = (vx * wx + vy * wy) / (vx * vx + vy * vy + 1e-12f);
  t = t < 0 ? 0 : t > 1 ? 1 : t;
  float dx = wx - t * vx, dy = wy - t * vy;
  return sqrtf(dx * dx + dy * dy);
}

/* How deep inside the instrument p is: > 0 inside (1 on the centre line),
 * <= 0 outside.  s is the quadrant's smaller side in pixels. */
static float shape_depth(const vl_demo_instrument *in, float cx, float cy, float s, float px,
                         float py) {
  float ca = cosf(in->angle), sa = sinf(in->angle);
  switch (in->shape) {
  case VL_DEMO_BAR: {
    float L = 0.30f * s, r = fmaxf(0.17f * s, 1.5f);
    return 1 - seg_dist(px, py, cx - L * ca, cy - L * sa, cx + L * ca, cy + L * sa) / r;
  }
  case VL_DEMO_CLIP: {
    /* a handle, a hinge, and two jaws opening at +-0.32 rad */
    float hx = cx - 0.20f * s * ca, hy = cy - 0.20f * s * sa, r = fmaxf(0.12f * s, 1.2f);
    float d = 1 - seg_dist(px, py, hx, hy, cx - 0.32f * s * ca, cy - 0.32f * s * sa) / (1.2f * r);
    for (int k = -1; k <= 1; k += 2) {
      float a = in->angle + 0.32f * (float)k;
      float jd = 1 - seg_dist(px, py, hx, hy, hx + 0.45f * s * cosf(a), hy + 0.45f * s * sinf(a)) / r;
      d = fmaxf(d, jd);
    }
    return d;
  }
  default: { /* ring */
    float ro = 0.42f * s, ri = 0.16f * s, mid = 0.5f * (ro + ri), half = 0.5f * (ro - ri);
    float dist = sqrtf((px - cx) * (px - cx) + (py - cy) * (py - cy));
    return 1 - fabsf(dist - mid) / half;
  }
  }
}

int vl_demo_draw(const vl_demo_scene *s, uint64_t seed, uint64_t index, int w, int h,
                 uint8_t *rgb) {
  if (w < 16 || h < 16) VL_ERROR(VL_EINVAL, "demo image %dx%d: at least 16x16", w, h);
  if (s->n < 1 || s->n > VL_DEMO_MAX_INSTRUMENTS) VL_ERROR(VL_EINVAL, "demo scene with %d instruments", s->n);
  rng r = rng_for(seed, index, 2);
  uint64_t k1 = rng_next(&r), k2 = rng_next(&r), k3 = rng_next(&r), kg = rng_next(&r);
  float scale = (float)(w < h ? w : h);
  float tint = rng_unit(&r) * 0.25f; /* some scenes are paler */
  static const int sub = 3;          /* 3x3 samples per pixel for smooth edges */
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      float fx = (float)x + 0.5f, fy = (float)y + 0.5f;
      float t = 0.55f * value_noise(k1, fx, fy, scale / 3) + 0.30f * value_noise(k2, fx, fy, scale / 7) +
                0.15f * value_noise(k3, fx, fy, scale / 16);
      t = fminf(fmaxf((t - 0.2f) / 0.6f - tint, 0), 1);
      float c[3] = {228 + (204 - 228) * t, 132 + (96 - 132) * t, 140 + (106 - 140) * t};
      float fine = value_noise(k3 ^ 0x77, fx, fy, scale / 24);
      if (fine > 0.84f) { /* wet highlights */
        float a = (fine - 0.84f) / 0.16f * 0.25f;
        for (int ch = 0; ch < 3; ch++) c[ch] += (250 - c[ch]) * a;
      }
      float grain = (lattice(kg, x, y) - 0.5f) * 8;
      for (int ch = 0; ch < 3; ch++) c[ch] += grain;
      for (int i = 0; i < s->n; i++) {
        const vl_demo_instrument *in = &s->inst[i];
        float qw = 0.5f * (float)w, qh = 0.5f * (float)h, qs = fminf(qw, qh);
        float cx = ((float)(in->quadrant & 1) + 0.5f + in->dx) * qw;
        float cy = ((float)(in->quadrant >> 1) + 0.5f + in->dy) * qh;
        float ex = fx - cx, ey = fy - cy, reach = 0.5f * qs + 1.5f; /* every shape lies within */
        if (ex * ex + ey * ey > reach * reach) continue;
        float cover = 0, depth = 0;
        for (int sy = 0; sy < sub; sy++)
          for (int sx = 0; sx < sub; sx++) {
            float d = shape_depth(in, cx, cy, qs, (float)x + ((float)sx + 0.5f) / (float)sub,
                                  (float)y + ((float)sy + 0.5f) / (float)sub);
            if (d > 0) { cover += 1; depth += d; }
          }
        if (cover == 0) continue;
        depth /= cover;
        cover /= (float)(sub * sub);
        const float *base = colour_rgb[in->colour];
        float shine = 80 * powf(depth, 6);
        for (int ch = 0; ch < 3; ch++) {
          float v = base[ch] * (0.72f + 0.28f * depth) + shine;
          c[ch] += (v - c[ch]) * cover;
        }
      }
      for (int ch = 0; ch < 3; ch++) {
        float v = roundf(c[ch]);
        rgb[((size_t)y * (size_t)w + (size_t)x) * 3 + (size_t)ch] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
    }
  return VL_OK;
}
