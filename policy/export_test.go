package policy

// Armed is closed once Run watches the folder and has read it (tests only).
func Armed(w *Watcher) <-chan struct{} { return w.armed }
