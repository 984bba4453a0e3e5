"""Test helpers, public so other programs and the benchmark reuse them: Pulumi mock runtime, throwaway services."""
