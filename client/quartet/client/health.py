"""`python -m quartet.client.health [TARGET]`: exit 0 when the quartet server there is SERVING."""

from quartet.client._health import main

if __name__ == "__main__":
    main()
