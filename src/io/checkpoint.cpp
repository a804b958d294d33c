#include "io/checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <limits>

#include "core/crc32c.h"
#include "io/atomic_file.h"

namespace dtrain::io {

static_assert(std::endian::native == std::endian::little,
              "the checkpoint format is little-endian; this build copies values as they lie");

namespace {

constexpr std::string_view kMagic = "DTRNCKPT";
constexpr size_t kFrameHeaderBytes = 24;  // magic, version, flags, body length
constexpr size_t kTrailerBytes = 4;       // CRC-32C
constexpr std::string_view kFilePrefix = "ckpt-";
constexpr std::string_view kFileSuffix = ".dtc";

// Appends little-endian fields to a byte string.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  template <typename T>
  void put(T value) {
    out_.append(reinterpret_cast<const char*>(&value), sizeof(value));
  }
  void put_string(std::string_view s) {
    if (s.size() > std::numeric_limits<uint32_t>::max()) {
      throw UsageError(
          fmt::format("checkpoint: a name or value of {} bytes is too long", s.size()));
    }
    put<uint32_t>(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void put_metadata(const std::map<std::string, std::string>& metadata) {
    put<uint32_t>(static_cast<uint32_t>(metadata.size()));
    for (const auto& [key, value] : metadata) {
      put_string(key);
      put_string(value);
    }
  }

 private:
  std::string& out_;
};

// Reads little-endian fields from the body, refusing to run past its end.
class Reader {
 public:
  Reader(std::string_view body, const std::string& path, int64_t step)
      : body_(body), path_(path), step_(step) {}

  void need(uint64_t bytes, std::string_view what) const {
    if (bytes > body_.size() - pos_) {
      throw CheckpointError(path_, step_,
                            fmt::format("malformed body: {} at body offset {} needs {} bytes, "
                                        "{} are left",
                                        what, pos_, bytes, body_.size() - pos_));
    }
  }
  template <typename T>
  T get(std::string_view what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, body_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::string get_string(std::string_view what) {
    const auto size = get<uint32_t>(what);
    need(size, what);
    std::string s(body_.substr(pos_, size));
    pos_ += size;
    return s;
  }
  void get_metadata(std::map<std::string, std::string>& out, std::string_view what) {
    const auto count = get<uint32_t>(what);
    for (uint32_t i = 0; i < count; ++i) {
      std::string key = get_string(what);
      out[std::move(key)] = get_string(what);
    }
  }
  void get_bytes(void* dst, uint64_t bytes, std::string_view what) {
    need(bytes, what);
    std::memcpy(dst, body_.data() + pos_, bytes);
    pos_ += bytes;
  }
  size_t left() const { return body_.size() - pos_; }
  size_t pos() const { return pos_; }
  [[noreturn]] void fail(const std::string& problem) const {
    throw CheckpointError(path_, step_, "malformed body: " + problem);
  }

 private:
  std::string_view body_;
  size_t pos_ = 0;
  const std::string& path_;
  int64_t step_;
};

Tensor read_tensor(Reader& in, const std::string& section, const std::string& name) {
  const std::string what = fmt::format("section '{}' tensor '{}'", section, name);
  const auto ndim = in.get<uint32_t>(what);
  in.need(static_cast<uint64_t>(ndim) * sizeof(int64_t), what + " shape");
  Shape shape;
  uint64_t numel = 1;
  for (uint32_t d = 0; d < ndim; ++d) {
    const auto extent = in.get<int64_t>(what);
    if (extent < 0) in.fail(fmt::format("{}: negative extent {}", what, extent));
    shape.push_back(extent);
    const auto e = static_cast<uint64_t>(extent);
    // Saturate: any product beyond the body size fails need() below.
    numel =
        (e != 0 && numel > in.left() / e) ? std::numeric_limits<uint64_t>::max() / 8 : numel * e;
  }
  in.need(numel * sizeof(float), what + " data");
  Tensor tensor = Tensor::empty(shape);
  in.get_bytes(tensor.data(), numel * sizeof(float), what + " data");
  return tensor;
}

Checkpoint decode_body(std::string_view body, const std::string& path) {
  Checkpoint checkpoint;
  int64_t step = -1;
  if (body.size() >= sizeof(int64_t)) std::memcpy(&step, body.data(), sizeof(step));
  Reader in(body, path, step);
  checkpoint.step = in.get<int64_t>("step");
  checkpoint.epoch = in.get<int64_t>("epoch");
  if (checkpoint.step < 0) in.fail(fmt::format("step {} is negative", checkpoint.step));
  if (checkpoint.epoch < 0) in.fail(fmt::format("epoch {} is negative", checkpoint.epoch));
  in.get_metadata(checkpoint.metadata, "checkpoint metadata");
  const auto sections = in.get<uint32_t>("section count");
  for (uint32_t s = 0; s < sections; ++s) {
    std::string name = in.get_string("section name");
    if (checkpoint.has_section(name)) in.fail(fmt::format("section '{}' appears twice", name));
    StateDict dict;
    in.get_metadata(dict.metadata(), fmt::format("section '{}' metadata", name));
    const auto tensors = in.get<uint32_t>(fmt::format("section '{}' tensor count", name));
    for (uint32_t t = 0; t < tensors; ++t) {
      std::string tensor_name = in.get_string(fmt::format("section '{}' tensor name", name));
      if (dict.contains(tensor_name)) {
        in.fail(fmt::format("section '{}' names tensor '{}' twice", name, tensor_name));
      }
      Tensor tensor = read_tensor(in, name, tensor_name);
      dict.insert(std::move(tensor_name), std::move(tensor));
    }
    checkpoint.add_section(std::move(name), std::move(dict));
  }
  if (in.left() != 0) {
    in.fail(fmt::format("{} unexpected bytes after the last section at body offset {}", in.left(),
                        in.pos()));
  }
  return checkpoint;
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
  std::string out;
  Writer w(out);
  out += kMagic;
  w.put<uint32_t>(kCheckpointFormatVersion);
  w.put<uint32_t>(0);  // flags
  w.put<uint64_t>(0);  // body length, patched below
  w.put<int64_t>(checkpoint.step);
  w.put<int64_t>(checkpoint.epoch);
  w.put_metadata(checkpoint.metadata);
  w.put<uint32_t>(static_cast<uint32_t>(checkpoint.sections.size()));
  for (const auto& [name, dict] : checkpoint.sections) {
    w.put_string(name);
    w.put_metadata(dict.metadata());
    w.put<uint32_t>(static_cast<uint32_t>(dict.size()));
    for (const auto& [tensor_name, tensor] : dict) {
      w.put_string(tensor_name);
      w.put<uint32_t>(static_cast<uint32_t>(tensor.dim()));
      for (const int64_t extent : tensor.shape()) w.put<int64_t>(extent);
      out.append(reinterpret_cast<const char*>(tensor.data()),
                 static_cast<size_t>(tensor.numel()) * sizeof(float));
    }
  }
  const uint64_t body_length = out.size() - kFrameHeaderBytes;
  std::memcpy(out.data() + 16, &body_length, sizeof(body_length));
  w.put<uint32_t>(crc32c(out.data(), out.size()));
  return out;
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
  uint32_t version = 0, flags = 0;
  uint64_t body_length = 0;
  std::memcpy(&version, bytes.data() + 8, sizeof(version));
  std::memcpy(&flags, bytes.data() + 12, sizeof(flags));
  std::memcpy(&body_length, bytes.data() + 16, sizeof(body_length));
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
  const size_t crc_at = kFrameHeaderBytes + body_length;
  uint32_t stored = 0;
  std::memcpy(&stored, bytes.data() + crc_at, sizeof(stored));
  const uint32_t computed = crc32c(bytes.data(), crc_at);
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
  return decode_body(bytes.substr(kFrameHeaderBytes, body_length), path);
}

void write_checkpoint(const Checkpoint& checkpoint, const std::string& path, FileSystem& fs) {
  const std::string bytes = encode_checkpoint(checkpoint);
  try {
    write_file_atomic(fs, path, bytes);
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
