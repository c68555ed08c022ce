// GPT-2 byte-level alphabet: every byte has a printable stand-in character, so byte strings can be
// spelled as text in tokenizer.json. Also the UTF-8 helpers the tokenizer needs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace sftgo::tok {

// The code point that stands for byte b in tokenizer.json spellings.
uint32_t byte_to_codepoint(uint8_t b);
// The byte a stand-in code point means, or -1 when cp is not in the byte-level alphabet.
int codepoint_to_byte(uint32_t cp);

void append_utf8(std::string& out, uint32_t cp);
// Decodes one code point at s[i] (s known to be valid UTF-8) and advances i.
uint32_t next_codepoint(std::string_view s, size_t& i);

// Raw bytes of a spelled token when every char is in the byte-level alphabet; false otherwise
// (HF's ByteLevel decoder then uses the spelling's own UTF-8 bytes).
bool spelled_to_bytes(std::string_view spelled, std::string& out);
// Bytes a token contributes to decode(): as HF's ByteLevel decoder does per token.
std::string decoder_bytes(std::string_view spelled);
std::string bytes_to_spelled(std::string_view raw);

// Replaces every maximal invalid UTF-8 subsequence with U+FFFD, exactly as Rust's
// String::from_utf8_lossy (which HF's ByteLevel decoder calls).
void append_utf8_lossy(std::string& out, std::string_view bytes);

}  // namespace sftgo::tok
