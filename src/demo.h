/* demo: the procedurally drawn demo task that vldemo writes and the
 * quickstart trains on.  A scene is a textured pink/red tissue background
 * (seeded value noise) with one to three instruments (bar, clip, ring) of
 * distinct colours, each in its own quadrant of the image, and one question
 * about it whose one-word answer needs the image: the colour of an
 * instrument, how many instruments there are, or on which side an
 * instrument of a given colour lies.  Everything is a pure function of
 * (seed, index), so a dataset is reproducible record by record.
 *
 * Why quadrants: at the default 64x64 with 16-pixel patches and 2x2 merging
 * each quadrant is exactly one LLM vision token, so a tiny model can learn
 * the task in minutes on a CPU; larger sizes keep the layout.
 *
 * Does not own: files (vldemo writes the PNG and JSONL), tokenization. */
#ifndef VL_DEMO_H
#define VL_DEMO_H

#include <stddef.h>
#include <stdint.h>

enum { VL_DEMO_BAR, VL_DEMO_CLIP, VL_DEMO_RING, VL_DEMO_N_SHAPES };
enum { VL_DEMO_GREEN, VL_DEMO_BLUE, VL_DEMO_YELLOW, VL_DEMO_BLACK, VL_DEMO_N_COLOURS };
enum { VL_DEMO_Q_COLOUR, VL_DEMO_Q_COUNT, VL_DEMO_Q_SIDE, VL_DEMO_N_QTYPES };

#define VL_DEMO_MAX_INSTRUMENTS 3

typedef struct {
  int shape, colour;
  int quadrant;        /* 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right */
  float dx, dy, angle; /* offset from the quadrant centre (fraction of it), radians */
} vl_demo_instrument;

typedef struct {
  int n;                                   /* instruments, 1..3 */
  vl_demo_instrument inst[VL_DEMO_MAX_INSTRUMENTS];
  int qtype;                               /* VL_DEMO_Q_* */
  int n_classes;                           /* answers this question type has */
  char question[128];                      /* the user's text (without <image>) */
  char answer[128];                        /* the assistant's: short reasoning. answer */
  char answer_word[16];                    /* the answer alone */
} vl_demo_scene;

/* The scene and question of record `index`. */
void vl_demo_scene_make(vl_demo_scene *s, uint64_t seed, uint64_t index);

/* Draws the scene into rgb (h * w * 3 bytes, row-major); w, h >= 16. */
int vl_demo_draw(const vl_demo_scene *s, uint64_t seed, uint64_t index, int w, int h,
                 uint8_t *rgb);

const char *vl_demo_colour_name(int colour);
const char *vl_demo_shape_name(int shape);

#endif
