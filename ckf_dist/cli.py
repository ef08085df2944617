def main():
    print("ckf")
