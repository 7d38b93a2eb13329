/* micro_model: the model section of the micro Qwen3-VL that the trainer
 * tests share (2 text layers of width 16, vocabulary 96, a 2-block vision
 * tower with one DeepStack level): each test appends its own train: and
 * run: sections, e.g.  static const char *yaml = VL_TEST_MICRO_MODEL
 * "train: {...}\n";  */
#ifndef VL_TEST_MICRO_MODEL_H
#define VL_TEST_MICRO_MODEL_H

#define VL_TEST_MICRO_MODEL                                                                       \
  "model:\n  family: qwen3-vl\n"                                                                \
  "  text: {vocab_size: 96, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2,\n"    \
  "         num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, rope_theta: 10000,\n"  \
  "         mrope_section: [2, 1, 1]}\n"                                                        \
  "  vision: {depth: 2, hidden_size: 16, intermediate_size: 24, num_heads: 2, patch_size: 2,\n" \
  "           spatial_merge_size: 2, out_hidden_size: 16, num_position_embeddings: 16,\n"      \
  "           deepstack_visual_indexes: [1]}\n"                                                 \
  "  tokens: {image_token_id: 92, video_token_id: 93, vision_start_token_id: 90,\n"            \
  "           vision_end_token_id: 91}\n"

#endif
