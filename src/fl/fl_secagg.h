// Secure aggregation in the deployed federated mode (docs/fl-deploy.md,
// "Secure aggregation"): the phase deadlines FlServer uses, and the
// conversion of the server's kSecAggSetup into the client's SecAggConfig.
//
// With fl.secure_aggregation, a deployed round runs the four phases of
// privacy/secagg.h between the server and its sampled clients over the
// job's authenticated frames (fl/fl_protocol.h kSecAggSetup, kSecAggBroadcast,
// kSecAggAnswer). What a client masks and what the server applies are
// fl/private_update.h's secagg_input and secagg_output, as in the
// simulation; the server learns the sum of the included clients' inputs and
// nothing of any single update.
//
// Deadlines: phase p (0: the local training and the key advertisement, 1:
// the encrypted shares, 2: the masked input, 3: the unmasking shares) ends
// at the round's start plus (phase_shares[0] + ... + phase_shares[p]) times
// fl.round_timeout_s, so time an early phase leaves goes to the later ones
// and the round never outlasts its timeout.
//
// Thread safety: values and pure functions. Errors: UsageError from
// validate() for shares that are not positive or sum to more than 1.
#pragma once

#include <array>

#include "fl/fl_protocol.h"
#include "privacy/secagg.h"

namespace dtrain::fl {

struct FlSecAggOptions {
  std::array<double, 4> phase_shares{0.7, 0.1, 0.1, 0.1};
};

void validate(const FlSecAggOptions& options);

// The config a client rebuilds from the server's setup.
privacy::SecAggConfig secagg_config(const FlSecAggSetup& setup);

}  // namespace dtrain::fl
