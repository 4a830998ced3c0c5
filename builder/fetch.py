"""ADD <url>: downloading a remote file for a build step, with its --checksum checked."""
