"""The quality loop: capture and redaction, feedback, drift monitors, evaluation, fine-tuning."""
