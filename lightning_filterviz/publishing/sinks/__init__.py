"""Where rendered outputs go: one sink per logger or destination, one file each."""
