"""Statistics: tidy frames in, tidy frames of tests out. Never reads FCS files."""
