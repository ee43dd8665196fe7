// The UTF-8 sequence length rule, in one place for the tokenizers (validation, byte-level BPE) and the server
// (where a streamed text may be cut).
#pragma once

namespace dmc {

// Bytes in the UTF-8 sequence that `lead` begins: 1 (ASCII), 2, 3 or 4; 0 when `lead` cannot begin one (a
// continuation byte 10xxxxxx, or 0xF8 and above).
inline int utf8_sequence_length(unsigned char lead) {
  return lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 0;
}

// How far a scan moves past the byte `lead`: its sequence length, or 1 for a byte that cannot begin one (it stands
// alone: the byte-level BPE maps it to its own symbol, the server's stream cut never splits there).
inline int utf8_step(unsigned char lead) {
  const int n = utf8_sequence_length(lead);
  return n > 0 ? n : 1;
}

}  // namespace dmc
