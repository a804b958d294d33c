#include "io/checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <span>

#include "core/byte_codec.h"
#include "core/crc32c.h"
#include "io/atomic_file.h"

namespace dtrain::io {

namespace {

constexpr std::string_view kMagic = "DTRNCKPT";
constexpr size_t kFrameHeaderBytes = 24;  // magic, version, flags, body length
constexpr size_t kBodyLengthOffset = 16;
constexpr size_t kTrailerBytes = 4;  // CRC-32C
constexpr std::string_view kFilePrefix = "ckpt-";
constexpr std::string_view kFileSuffix = ".dtc";
// A string's length is a u32; what is left of the body bounds it.
constexpr size_t kMaxStringBytes = std::numeric_limits<uint32_t>::max();

std::span<const std::byte> as_byte_span(std::string_view text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

void write_string(ByteWriter& w, std::string_view s) {
  if (s.size() > kMaxStringBytes) {
    throw UsageError(fmt::format("checkpoint: a name or value of {} bytes is too long", s.size()));
  }
  w.write_string(s, LengthPrefix::kU32);
}

void write_metadata(ByteWriter& w, const std::map<std::string, std::string>& metadata) {
  w.write_u32(static_cast<uint32_t>(metadata.size()));
  for (const auto& [key, value] : metadata) {
    write_string(w, key);
    write_string(w, value);
  }
}

// The whole file: frame header, body, CRC-32C.
std::vector<std::byte> encode_file(const Checkpoint& checkpoint) {
  ByteWriter w;
  w.write_bytes(as_byte_span(kMagic));
  w.write_u32(kCheckpointFormatVersion);
  w.write_u32(0);  // flags
  w.write_u64(0);  // body length, set below
  w.write_i64(checkpoint.step);
  w.write_i64(checkpoint.epoch);
  write_metadata(w, checkpoint.metadata);
  w.write_u32(static_cast<uint32_t>(checkpoint.sections.size()));
  for (const auto& [name, dict] : checkpoint.sections) {
    write_string(w, name);
    write_metadata(w, dict.metadata());
    w.write_u32(static_cast<uint32_t>(dict.size()));
    for (const auto& [tensor_name, tensor] : dict) {
      write_string(w, tensor_name);
      w.write_u32(static_cast<uint32_t>(tensor.dim()));
      for (const int64_t extent : tensor.shape()) w.write_i64(extent);
      w.write_f32_array(tensor.span());
    }
  }
  w.overwrite_u64(kBodyLengthOffset, w.size() - kFrameHeaderBytes);
  w.write_u32(crc32c(w.bytes().data(), w.size()));
  return w.take();
}

// Reads the body; a field that runs past its end is a DataError "malformed
// body: field '...' needs N bytes at offset O, only L left" (offsets count
// from the body's first byte), which decode_body labels with the path and step.
class BodyReader {
 public:
  // `body` and `path` are decode_checkpoint's, alive for the whole decode.
  BodyReader(std::span<const std::byte> body, const std::string& path)
      : in_(body, "malformed body"), path_(path) {}

  ByteReader& in() { return in_; }
  void set_step(int64_t step) { step_ = step; }
  int64_t step() const { return step_; }

  std::string read_string(std::string_view field) {
    return in_.read_string(field, kMaxStringBytes, LengthPrefix::kU32);
  }
  void read_metadata(std::map<std::string, std::string>& out, std::string_view field) {
    const uint32_t count = in_.read_u32(field);
    for (uint32_t i = 0; i < count; ++i) {
      std::string key = read_string(field);
      out[std::move(key)] = read_string(field);
    }
  }
  [[noreturn]] void fail(const std::string& problem) const {
    throw CheckpointError(path_, step_, "malformed body: " + problem);
  }

 private:
  ByteReader in_;
  const std::string& path_;
  int64_t step_ = -1;  // unknown until read
};

Tensor read_tensor(BodyReader& body, const std::string& section, const std::string& name) {
  ByteReader& in = body.in();
  const std::string what = fmt::format("section '{}' tensor '{}'", section, name);
  const uint32_t ndim = in.read_u32(what);
  in.need_elements(ndim, sizeof(int64_t), what + " shape");
  Shape shape;
  uint64_t numel = 1;
  for (uint32_t d = 0; d < ndim; ++d) {
    const int64_t extent = in.read_i64(what);
    if (extent < 0) body.fail(fmt::format("{}: negative extent {}", what, extent));
    shape.push_back(extent);
    const auto e = static_cast<uint64_t>(extent);
    // Saturate: any product beyond the body size fails need_elements below.
    numel = (e != 0 && numel > in.remaining() / e) ? std::numeric_limits<uint64_t>::max() / 8
                                                   : numel * e;
  }
  in.need_elements(numel, sizeof(float), what + " data");
  Tensor tensor = Tensor::empty(shape);
  in.read_f32_array_into(tensor.span(), what + " data");
  return tensor;
}

Checkpoint decode_sections(BodyReader& body) {
  ByteReader& in = body.in();
  Checkpoint checkpoint;
  checkpoint.step = in.read_i64("step");
  body.set_step(checkpoint.step);
  checkpoint.epoch = in.read_i64("epoch");
  if (checkpoint.step < 0) body.fail(fmt::format("step {} is negative", checkpoint.step));
  if (checkpoint.epoch < 0) body.fail(fmt::format("epoch {} is negative", checkpoint.epoch));
  body.read_metadata(checkpoint.metadata, "checkpoint metadata");
  const uint32_t sections = in.read_u32("section count");
  for (uint32_t s = 0; s < sections; ++s) {
    std::string name = body.read_string("section name");
    if (checkpoint.has_section(name)) body.fail(fmt::format("section '{}' appears twice", name));
    StateDict dict;
    body.read_metadata(dict.metadata(), fmt::format("section '{}' metadata", name));
    const uint32_t tensors = in.read_u32(fmt::format("section '{}' tensor count", name));
    for (uint32_t t = 0; t < tensors; ++t) {
      std::string tensor_name = body.read_string(fmt::format("section '{}' tensor name", name));
      if (dict.contains(tensor_name)) {
        body.fail(fmt::format("section '{}' names tensor '{}' twice", name, tensor_name));
      }
      Tensor tensor = read_tensor(body, name, tensor_name);
      dict.insert(std::move(tensor_name), std::move(tensor));
    }
    checkpoint.add_section(std::move(name), std::move(dict));
  }
  if (in.remaining() != 0) {
    body.fail(fmt::format("{} unexpected bytes after the last section at body offset {}",
                          in.remaining(), in.offset()));
  }
  return checkpoint;
}

Checkpoint decode_body(std::span<const std::byte> body_bytes, const std::string& path) {
  BodyReader body(body_bytes, path);
  try {
    return decode_sections(body);
  } catch (const DataError& e) {
    throw CheckpointError(path, body.step(), e.what());
  }
}

// "ckpt-<digits>.dtc" -> step; nullopt for any other name.
std::optional<int64_t> parse_checkpoint_name(std::string_view name) {
  if (name.size() <= kFilePrefix.size() + kFileSuffix.size() ||
      name.substr(0, kFilePrefix.size()) != kFilePrefix ||
      name.substr(name.size() - kFileSuffix.size()) != kFileSuffix) {
    return std::nullopt;
  }
  const std::string_view digits =
      name.substr(kFilePrefix.size(), name.size() - kFilePrefix.size() - kFileSuffix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  int64_t step = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return step;
}

}  // namespace

std::string encode_rng_state(const Rng::State& state) {
  return fmt::format("{:016x} {:016x} {:016x} {:016x}", state[0], state[1], state[2], state[3]);
}

Rng::State decode_rng_state(std::string_view text) {
  Rng::State state{};
  const auto bad = [&] {
    return DataError(
        fmt::format("rng state '{}': expected four 16-digit hex words separated by "
                    "spaces",
                    text));
  };
  if (text.size() != 4 * 16 + 3) throw bad();
  for (size_t w = 0; w < 4; ++w) {
    const char* begin = text.data() + w * 17;
    if (w > 0 && begin[-1] != ' ') throw bad();
    const auto [end, ec] = std::from_chars(begin, begin + 16, state[w], 16);
    if (ec != std::errc() || end != begin + 16) throw bad();
  }
  return state;
}

void Checkpoint::add_section(std::string name, StateDict dict) {
  if (has_section(name)) {
    throw UsageError(fmt::format("checkpoint: section '{}' added twice", name));
  }
  sections.emplace_back(std::move(name), std::move(dict));
}

bool Checkpoint::has_section(const std::string& name) const {
  return std::any_of(sections.begin(), sections.end(),
                     [&](const auto& section) { return section.first == name; });
}

const StateDict& Checkpoint::section(const std::string& name) const {
  for (const auto& [section_name, dict] : sections) {
    if (section_name == name) return dict;
  }
  std::string present;
  for (const auto& [section_name, dict] : sections) {
    present += (present.empty() ? "'" : ", '") + section_name + "'";
  }
  throw UsageError(fmt::format("checkpoint (step {}): no section '{}' (it has {})", step, name,
                               present.empty() ? "none" : present));
}

std::string encode_checkpoint(const Checkpoint& checkpoint) {
  const std::vector<std::byte> bytes = encode_file(checkpoint);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

Checkpoint decode_checkpoint(std::string_view bytes, const std::string& path) {
  if (bytes.empty()) throw CheckpointError(path, -1, "the file is empty");
  const std::string_view magic_part = bytes.substr(0, std::min(bytes.size(), kMagic.size()));
  if (magic_part != kMagic.substr(0, magic_part.size())) {
    throw CheckpointError(path, -1,
                          "not a dtrain checkpoint: the file does not begin with "
                          "\"DTRNCKPT\"");
  }
  if (bytes.size() < kFrameHeaderBytes + kTrailerBytes) {
    throw CheckpointError(path, -1,
                          fmt::format("truncated: {} bytes, a checkpoint has at least "
                                      "{}",
                                      bytes.size(), kFrameHeaderBytes + kTrailerBytes));
  }
  // At least 28 bytes: the frame header's reads cannot fail.
  ByteReader frame(as_byte_span(bytes), "checkpoint " + path);
  frame.read_bytes(kMagic.size(), "magic");
  const uint32_t version = frame.read_u32("format version");
  const uint32_t flags = frame.read_u32("flags");
  const uint64_t body_length = frame.read_u64("body length");
  const uint64_t available = bytes.size() - kFrameHeaderBytes - kTrailerBytes;
  if (body_length > available) {
    throw CheckpointError(path, -1,
                          fmt::format("truncated: the header announces a body of {} "
                                      "bytes, the file holds {}",
                                      body_length, available));
  }
  if (body_length < available) {
    throw CheckpointError(
        path, -1, fmt::format("{} unexpected bytes after the checksum", available - body_length));
  }
  const std::span<const std::byte> body = frame.read_bytes(body_length, "body");
  const uint32_t computed = crc32c(bytes.data(), frame.offset());
  const uint32_t stored = frame.read_u32("CRC-32C");
  if (stored != computed) {
    throw CheckpointError(path, -1,
                          fmt::format("corrupt: CRC-32C is 0x{:08x}, the file stores "
                                      "0x{:08x}",
                                      computed, stored));
  }
  if (version != kCheckpointFormatVersion) {
    throw CheckpointError(path, -1,
                          fmt::format("format version {}, this build reads version {}", version,
                                      kCheckpointFormatVersion));
  }
  if (flags != 0) {
    throw CheckpointError(path, -1,
                          fmt::format("unknown flags 0x{:08x} (version {} defines none)", flags,
                                      kCheckpointFormatVersion));
  }
  return decode_body(body, path);
}

void write_checkpoint(const Checkpoint& checkpoint, const std::string& path, FileSystem& fs) {
  const std::vector<std::byte> bytes = encode_file(checkpoint);
  try {
    write_file_atomic(fs, path,
                      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  } catch (const FileError& e) {
    throw CheckpointError(path, checkpoint.step, fmt::format("write failed: {}", e.what()));
  }
}

Checkpoint read_checkpoint(const std::string& path, FileSystem& fs, uint64_t max_bytes) {
  std::string bytes;
  try {
    bytes = fs.read_file(path, max_bytes);
  } catch (const FileError& e) {
    throw CheckpointError(path, -1, fmt::format("cannot read: {}", e.reason()));
  }
  return decode_checkpoint(bytes, path);
}

std::optional<std::string> describe_non_finite(const Checkpoint& checkpoint) {
  for (const auto& [name, dict] : checkpoint.sections) {
    if (const std::optional<NonFinite> bad = find_non_finite(dict)) {
      return fmt::format("section '{}' tensor '{}' element {} is {}", name, bad->name, bad->index,
                         bad->value);
    }
  }
  return std::nullopt;
}

void stamp_identity(Checkpoint& checkpoint, const JobIdentity& identity) {
  checkpoint.metadata[std::string(kJobNameKey)] = identity.job_name;
  checkpoint.metadata[std::string(kModelFingerprintKey)] = identity.model_fingerprint;
}

namespace {

// Why `checkpoint` is not the job's: nullopt when its identity matches.
std::optional<std::string> identity_mismatch(const Checkpoint& checkpoint,
                                             const JobIdentity& identity) {
  if (!identity.job_name.empty()) {
    const auto it = checkpoint.metadata.find(std::string(kJobNameKey));
    if (it == checkpoint.metadata.end()) return "carries no job name";
    if (it->second != identity.job_name) {
      return fmt::format("written by job '{}', this job is '{}'", it->second, identity.job_name);
    }
  }
  if (!identity.model_fingerprint.empty()) {
    const std::string section(kModelSection);
    if (!checkpoint.has_section(section)) return fmt::format("has no '{}' section", section);
    const std::string fingerprint = state_fingerprint(checkpoint.section(section));
    if (fingerprint != identity.model_fingerprint) {
      return fmt::format(
          "its model (fingerprint {}) is not this job's (fingerprint {}): layers "
          "or their sizes differ",
          fingerprint, identity.model_fingerprint);
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> check_resume(const std::string& path, const Checkpoint& checkpoint,
                                        const ResumeCheck& check, Logger& logger) {
  if (checkpoint.step > check.max_step) {
    return fmt::format("step {} is beyond the job's last step {}", checkpoint.step, check.max_step);
  }
  if (checkpoint.epoch > check.max_epoch) {
    return fmt::format("epoch {} is beyond the job's {} epochs", checkpoint.epoch, check.max_epoch);
  }
  std::optional<std::string> mismatch = identity_mismatch(checkpoint, check.identity);
  if (mismatch && check.force_identity) {
    logger.warn("checkpoint {}: {}; using it anyway (the identity check is forced)", path,
                *mismatch);
    return std::nullopt;
  }
  return mismatch;
}

CheckpointValidator resume_validator(ResumeCheck check, Logger& logger) {
  return [check = std::move(check), &logger](const std::string& path, const Checkpoint& c) {
    return check_resume(path, c, check, logger);
  };
}

CheckpointDirectory::CheckpointDirectory(std::string dir, int64_t keep_last, FileSystem& fs,
                                         Logger& logger)
    : dir_(std::move(dir)), keep_last_(keep_last), fs_(fs), logger_(logger) {
  if (keep_last_ < 1) {
    throw UsageError(fmt::format("checkpoint directory {}: keep_last must be at least 1, got {}",
                                 dir_, keep_last_));
  }
}

std::string CheckpointDirectory::path_for(int64_t step) const {
  return join_path(dir_, fmt::format("{}{}{}", kFilePrefix, step, kFileSuffix));
}

std::vector<int64_t> CheckpointDirectory::steps() const {
  std::vector<int64_t> found;
  if (!fs_.exists(dir_)) return found;
  try {
    for (const std::string& name : fs_.list_directory(dir_)) {
      if (const auto step = parse_checkpoint_name(name)) found.push_back(*step);
    }
  } catch (const FileError& e) {
    throw CheckpointError(dir_, -1, fmt::format("cannot list the folder: {}", e.reason()));
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::string CheckpointDirectory::write(const Checkpoint& checkpoint) {
  if (checkpoint.step < 0) {
    throw UsageError(fmt::format("checkpoint directory {}: step must be non-negative, got {}", dir_,
                                 checkpoint.step));
  }
  const std::string path = path_for(checkpoint.step);
  try {
    fs_.create_directories(dir_);
  } catch (const FileError& e) {
    throw CheckpointError(path, checkpoint.step, fmt::format("write failed: {}", e.what()));
  }
  write_checkpoint(checkpoint, path, fs_);
  known_[checkpoint.step] =
      describe_non_finite(checkpoint) ? Validity::kNonFinite : Validity::kValid;
  prune();
  // One writer per folder: any checkpoint temporary still here was left by
  // a writer that died (write_file_atomic only cleans its own name's).
  try {
    for (const std::string& entry : fs_.list_directory(dir_)) {
      if (entry.rfind(kFilePrefix, 0) == 0 && is_temporary_file(entry)) {
        fs_.remove_file(dir_ + "/" + entry);
      }
    }
  } catch (const FileError& e) {
    logger_.warn("checkpoint directory {}: could not remove a stale temporary file: {}", dir_,
                 e.reason());
  }
  return path;
}

CheckpointDirectory::Validity CheckpointDirectory::validity(int64_t step) {
  if (const auto it = known_.find(step); it != known_.end()) return it->second;
  Validity v = Validity::kValid;
  try {
    if (describe_non_finite(read_checkpoint(path_for(step), fs_))) v = Validity::kNonFinite;
  } catch (const CheckpointError&) {
    v = Validity::kUnreadable;
  }
  known_[step] = v;
  return v;
}

void CheckpointDirectory::prune() {
  const std::vector<int64_t> present = steps();
  const auto excess = static_cast<int64_t>(present.size()) - keep_last_;
  if (excess <= 0) return;
  // The newest valid checkpoint survives pruning; anything older may go.
  std::optional<int64_t> newest_valid;
  for (auto it = present.rbegin(); it != present.rend(); ++it) {
    if (validity(*it) == Validity::kValid) {
      newest_valid = *it;
      break;
    }
  }
  for (int64_t i = 0; i < excess; ++i) {
    const int64_t step = present[static_cast<size_t>(i)];
    if (step == newest_valid) continue;
    const std::string old = path_for(step);
    const bool newer_than_valid = !newest_valid || step > *newest_valid;
    if (newer_than_valid && validity(step) == Validity::kUnreadable) {
      // Damaged, not superseded: keep the bytes for a post-mortem.
      if (!move_aside(old).empty()) known_.erase(step);
      continue;
    }
    try {
      fs_.remove_file(old);
      known_.erase(step);
    } catch (const FileError& e) {
      logger_.warn("checkpoint directory {}: could not remove old checkpoint {}: {}", dir_, old,
                   e.reason());
    }
  }
}

std::string CheckpointDirectory::move_aside(const std::string& path) {
  const std::string folder = join_path(dir_, kRejectedFolder);
  const std::string name = base_name(path);
  try {
    fs_.create_directories(folder);
    std::string target = join_path(folder, name);
    for (int suffix = 1; fs_.exists(target); ++suffix) {
      target = join_path(folder, fmt::format("{}.{}", name, suffix));
    }
    fs_.rename_file(path, target);
    fs_.sync_directory(folder);
    fs_.sync_directory(dir_);
    return target;
  } catch (const FileError& e) {
    logger_.warn("checkpoint directory {}: could not move {} to {}/: {}", dir_, path, folder,
                 e.what());
    return "";
  }
}

std::optional<CheckpointDirectory::SetAside> CheckpointDirectory::set_aside(
    std::string_view folder_name) {
  std::vector<int64_t> found;
  try {
    found = steps();
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (found.empty()) return std::nullopt;
  SetAside moved{join_path(dir_, folder_name), std::move(found)};
  const CheckpointDirectory previous(moved.folder, 1, fs_, logger_);
  for (const int64_t step : previous.steps()) fs_.remove_file(previous.path_for(step));
  fs_.create_directories(moved.folder);
  for (const int64_t step : moved.steps) {
    const std::string path = path_for(step);
    fs_.rename_file(path, join_path(moved.folder, path.substr(path.rfind('/') + 1)));
  }
  fs_.sync_directory(dir_);
  return moved;
}

std::optional<CheckpointDirectory::Found> CheckpointDirectory::load_latest(
    const CheckpointLoadOptions& options) {
  const std::vector<int64_t> present = steps();
  for (auto it = present.rbegin(); it != present.rend(); ++it) {
    const std::string path = path_for(*it);
    std::optional<Checkpoint> checkpoint;
    std::string problem;
    try {
      checkpoint = read_checkpoint(path, fs_, options.max_file_bytes);
    } catch (const CheckpointError& e) {
      problem = fmt::format("skipping unreadable checkpoint: {}", e.what());
    }
    if (checkpoint) {
      // Outside the try: an exception of the validator is the caller's, not
      // a sign of a damaged file.
      std::optional<std::string> refusal;
      if (options.require_finite) {
        if (const auto non_finite = describe_non_finite(*checkpoint)) {
          refusal = "holds a non-finite value: " + *non_finite;
        }
      }
      if (!refusal && options.validate) refusal = options.validate(path, *checkpoint);
      if (!refusal) {
        if (options.require_finite) known_[*it] = Validity::kValid;
        return Found{path, std::move(*checkpoint)};
      }
      problem =
          fmt::format("skipping checkpoint {} (step {}): {}", path, checkpoint->step, *refusal);
    }
    if (!options.move_refused) {
      logger_.warn("{}", problem);
      continue;
    }
    const std::string moved = move_aside(path);
    if (!moved.empty()) known_.erase(*it);
    logger_.warn("{}; {}", problem,
                 moved.empty() ? "left in place" : fmt::format("moved it to {}", moved));
  }
  return std::nullopt;
}

}  // namespace dtrain::io
