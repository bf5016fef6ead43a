package app

import "github.com/memberd/memberd/internal/relayd"

// loadRelayConfig reads and validates relay.yaml (usage errors).
var loadRelayConfig = relayd.LoadConfig
