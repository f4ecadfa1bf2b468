"""The local demo (``hacore demo``): a 3-node cluster running the sample manager, or only its
consensus store. Uses hacore the way an operator does, through the CLI and the API."""
