from workers.runner import main

# Guarded: vLLM starts its engine processes by spawning, which imports this module again.
if __name__ == "__main__":
    main()
