"""polysocket's built-in engines, each a pluggy plugin found through its entry point."""
