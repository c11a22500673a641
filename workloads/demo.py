"""`make demo`: the main job on the embedded data (thin entry point; the work is in orchestrator.demo)."""

from orchestrator.demo import main

if __name__ == "__main__":
    main()
