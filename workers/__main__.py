from workers.runner import main

# Guarded: vLLM starts its engine processes by spawning; see workers/lifecycle.py for what they import.
if __name__ == "__main__":
    main()
