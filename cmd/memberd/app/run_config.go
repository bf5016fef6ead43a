package app

import "github.com/memberd/memberd/internal/appliance"

// loadRunConfig reads and validates memberd.yaml (usage errors).
var loadRunConfig = appliance.LoadConfig
