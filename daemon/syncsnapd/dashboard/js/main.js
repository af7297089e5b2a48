// syncsnap dashboard entry point
