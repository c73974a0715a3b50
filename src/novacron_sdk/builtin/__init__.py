"""The embedded defaults, registered as essential plugins: enough to run the main job alone."""
