"""convfocus.io"""
