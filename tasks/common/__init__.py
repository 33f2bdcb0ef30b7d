"""What every layer may use: errors meant for the user, checkpoint files and the inference metadata
they carry. Imports nothing of Lightning's training machinery."""
